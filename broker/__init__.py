"""jobq broker: the dispatcher service, job state, retries, rescheduling and the HTTP API."""

from __future__ import annotations

from typing import Any


def discover(discover_system: bool = True) -> Any:
    """Chaos Toolkit's `chaos discover jobq` entry point.

    chaoslib looks for ``discover`` in the first top-level package of the ``jobq`` distribution,
    which is this one; the extension itself lives in the ``chaos`` package.
    """
    from chaos import discover as discover_chaos

    return discover_chaos(discover_system=discover_system)
