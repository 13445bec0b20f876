"""What every jobq chaos action shares: it runs against the stack with a short-lived client, a
ChaosError (the stack could not be found, or did not do what the action needed) fails the
activity in Chaos Toolkit's terms, and a kill is recorded in the run's state as it happens."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chaoslib.exceptions import ActivityFailed

from chaos import target
from chaos.target import ChaosError, Configuration
from submitter.client import JobqClient

T = TypeVar("T")


def failed(exc: Exception) -> ActivityFailed:
    return ActivityFailed(str(exc))


def on_stack(configuration: Configuration, use: Callable[[JobqClient], Awaitable[T]]) -> T:
    """``use`` a client of the stack under test; a ChaosError fails the activity."""
    try:
        return target.run_async(lambda: target.with_client(configuration, use))
    except ChaosError as exc:
        raise failed(exc) from exc


def kill(configuration: Configuration, pid: int, *, kind: str, victim: str,
         **details: Any) -> tuple[int, dict[str, Any]]:
    """SIGKILL ``pid`` and record the disruption (``kind``, the ``victim``'s name, ``details``) in
    the run's state; its index there (for ``target.update_disruption``) and the record."""
    at = target.now_iso()
    os.kill(pid, signal.SIGKILL)
    disruption = {"kind": kind, "target": victim, "pid": pid, "signal": "SIGKILL", "at": at, **details}
    return target.record_disruption(configuration, disruption), disruption
