"""``<data_dir>/stack.json``: what a running `jobq up` tells the other commands (where its NATS
and API are, its CA, where its submitter's and operator's credentials are). The CLI, the SDK's
users and chaos experiments read it; what it points to is handed out for that stack's own NATS
only, never to another server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from broker.embedded import nats_tls
from broker.embedded.stack_auth import CREDENTIAL_ENV, nats_auth_of

STATE_FILE = "stack.json"


def read_state(data_dir: Path) -> dict[str, object] | None:
    """The running stack's stack.json, if one is running from ``data_dir``."""
    path = data_dir / STATE_FILE
    try:
        state: dict[str, object] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return state


def state_for(url: str, data_dir: Path) -> dict[str, object]:
    """The stack.json of the stack running from ``data_dir`` if ``url`` is its own NATS, else {}."""
    state = read_state(data_dir) or {}
    own = state.get("nats_url")
    return state if isinstance(own, str) and nats_tls.same_servers(url, own) else {}


def nats_ca_for(url: str, data_dir: Path) -> str:
    """The CA of the stack running from ``data_dir`` if ``url`` is that stack's own NATS, else ""."""
    ca = state_for(url, data_dir).get("nats_ca")
    return ca if isinstance(ca, str) else ""


def nats_auth_for(url: str, data_dir: Path, role: str) -> dict[str, str] | None:
    """``role``'s credentials (``submitter`` or ``operator``) on the stack running from
    ``data_dir`` if ``url`` is its own NATS; None when the environment names credentials
    (JOBQ_NATS_*: they are used instead), or the stack runs without NATS users."""
    if any(os.environ.get(name) for name in CREDENTIAL_ENV):
        return None
    return nats_auth_of(state_for(url, data_dir), role)
