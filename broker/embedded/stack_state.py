"""``<data_dir>/stack.json``: what a running `jobq up` tells the other commands (where its NATS
and API are, its CA, where its submitter's and operator's credentials are). The CLI, the SDK's
users and chaos experiments read it; what it points to is handed out for that stack's own NATS
only, never to another server.

The light client (no extras) reads it too, so this module imports the contract only: no TLS or
NATS-auth machinery (those need ``cryptography``, in the ``server`` extra)."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from broker import contract

STATE_FILE = "stack.json"
CREDENTIAL_ENV = (contract.ENV_NATS_USER, contract.ENV_NATS_PASSWORD, contract.ENV_NATS_PASSWORD_FILE,
                  contract.ENV_NATS_TOKEN, contract.ENV_NATS_CREDS, contract.ENV_NATS_AUTH_DIR)
"""The environment's NATS credentials: what a started process must not inherit from the
supervisor's environment, and what, when set, is used instead of a stack's."""


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
    return state if isinstance(own, str) and same_servers(url, own) else {}


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


def nats_auth_of(state: Mapping[str, object], role: str) -> dict[str, str] | None:
    """nats.connect credentials of ``role`` (``submitter`` or ``operator``) for the stack whose
    stack.json is ``state``; None when it runs without NATS users."""
    found = state.get("nats_auth")
    entry = found.get(role) if isinstance(found, dict) else None
    if not isinstance(entry, dict):
        return None
    user, path = entry.get("user"), entry.get("password_file")
    if not isinstance(user, str) or not isinstance(path, str):
        return None
    return {"user": user, "password": contract.read_secret_file(path, f"stack.json nats_auth.{role}")}


def same_servers(a: str, b: str) -> bool:
    """Whether two NATS URL lists name the same servers (scheme and credentials aside)."""

    def hosts(urls: str) -> set[str]:
        parts = (urllib.parse.urlsplit(u.strip()) for u in urls.split(",") if u.strip())
        return {p.netloc.rpartition("@")[2] for p in parts}

    return bool(a and b) and hosts(a) == hosts(b)
