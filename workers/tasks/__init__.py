"""What a task sees: the task signature, its context, and the exceptions it may raise.

A task is ``def task(args: dict[str, Any], ctx: TaskContext) -> dict[str, Any]`` (or the same
as an ``async def``). Synchronous tasks run in a thread, so they may block; asynchronous tasks
run on the runner's event loop and must not (they use ``await ctx.asave_artifact`` and
``await ctx.aload_artifact``). The returned dict is the attempt's result and must be
JSON-serialisable.

Exceptions and the runner's exit code::

    TaskExit(code)        exit with exactly ``code`` (0 counts as success with empty output)
    ├── BadArgs           exit 2: the arguments can never work, retrying is pointless
    └── Superseded        exit 6: a newer attempt owns the job's checkpoints; stop
    any other exception   exit 1: traceback on stderr, retried by the dispatcher's policy

This module imports nothing heavy: task modules import scikit-learn inside the task functions
so that the runner connects and starts heart-beating before that cost is paid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from broker.contract.names import EXIT_SUPERSEDED

__all__ = [
    "ArtifactNotFound", "AsyncTask", "BadArgs", "Restored", "Superseded", "SyncTask", "Task",
    "TaskContext", "TaskExit",
    "bool_arg", "check_keys", "choice_arg", "dict_arg", "float_arg", "int_arg",
]


class TaskContext(Protocol):
    """The runner's services for one attempt; safe to call from a task's thread."""

    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def node(self) -> str | None: ...

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress (clamped to 0..1); the next heartbeat carries it, and readers (SDK,
        CLI, API, dashboard) see it within about 2 s (docs/design/progress.md)."""

    def save_artifact(self, name: str, data: bytes) -> str:
        """Store ``data`` as artifact ``name`` of this attempt, under
        ``contract.artifact_key(job_id, attempt, name)`` (``<job_id>/<attempt>/<name>``) and
        stamped with this pod as its writer; return that key. Another attempt's artifacts are
        never replaced."""

    def load_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        """Read artifact ``name``: this attempt's own by default; with ``job_id``, the one of that
        job's accepted attempt (its record's ``result_attempt``), written by that attempt's pod.
        Raise ArtifactNotFound if it is absent, or the job has no accepted result."""

    async def asave_artifact(self, name: str, data: bytes) -> str:
        """save_artifact for async tasks (the blocking form would stall the event loop)."""

    async def aload_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        """load_artifact for async tasks."""

    def checkpoint(self, state: bytes, *, step: int) -> None:
        """Save ``state`` as the job's newest checkpoint, reached at ``step`` (the task's own
        count: an epoch, a batch). A replacement attempt gets it from ``restore``. Raise Superseded
        when a newer attempt of the job owns its checkpoints; this attempt must then stop
        (docs/design/checkpoints.md)."""

    def restore(self) -> Restored | None:
        """The job's newest checkpoint, written by this or an earlier attempt, or None to start
        from scratch. Call it before the first ``checkpoint``: it makes this attempt the owner of
        the job's checkpoints, so an older attempt that is still running can no longer write
        any. Raise Superseded when a newer attempt already owns them."""

    async def acheckpoint(self, state: bytes, *, step: int) -> None:
        """checkpoint for async tasks."""

    async def arestore(self) -> Restored | None:
        """restore for async tasks."""


SyncTask = Callable[[dict[str, Any], TaskContext], dict[str, Any]]
AsyncTask = Callable[[dict[str, Any], TaskContext], Awaitable[dict[str, Any]]]
Task = SyncTask | AsyncTask


class TaskExit(Exception):
    """Make the runner exit with exactly ``code`` (printing ``message``, if any, to stderr)."""

    def __init__(self, code: int, message: str = "") -> None:
        if not 0 <= code <= 255:
            raise ValueError(f"exit code {code} is outside 0..255")
        super().__init__(message or f"task exited with code {code}")
        self.code = code
        self.message = message


class BadArgs(TaskExit):
    """The task's arguments are invalid; the runner exits 2 (``runner.EXIT_BAD_ARGS``)."""

    CODE = 2

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message)


@dataclasses.dataclass(frozen=True, slots=True)
class Restored:
    """A checkpoint handed back by ``restore``."""

    state: bytes
    step: int
    attempt: int
    """The attempt whose work the state is (this one's, or an earlier attempt's)."""


class Superseded(TaskExit):
    """A newer attempt of the job owns its checkpoints: this attempt was replaced (its node was
    thought lost, say) and must stop; the runner exits ``EXIT_SUPERSEDED`` without a result."""

    CODE = EXIT_SUPERSEDED

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message)


class ArtifactNotFound(LookupError):
    """``load_artifact`` found no object of that name written by the attempt it reads from, or
    the job named has no accepted result (the message says which)."""


# --- argument helpers: each raises BadArgs with a message naming the argument -----------------

_T = TypeVar("_T")


def check_keys(args: Mapping[str, Any], allowed: Collection[str]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise BadArgs(f"unknown argument(s) {', '.join(unknown)}; "
                      f"this task takes {', '.join(sorted(allowed)) or 'none'}")


def int_arg(args: Mapping[str, Any], key: str, *, default: int,
            low: int | None = None, high: int | None = None) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadArgs(f"argument {key!r} must be an integer, not {value!r}")
    _check_range(key, value, low, high)
    return value


def float_arg(args: Mapping[str, Any], key: str, *, default: float,
              low: float | None = None, high: float | None = None) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadArgs(f"argument {key!r} must be a number, not {value!r}")
    _check_range(key, value, low, high)
    return float(value)


def bool_arg(args: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise BadArgs(f"argument {key!r} must be true or false, not {value!r}")
    return value


def choice_arg(args: Mapping[str, Any], key: str, *, default: _T, choices: Sequence[_T]) -> _T:
    value = args.get(key, default)
    if value not in choices:
        raise BadArgs(f"argument {key!r} is {value!r}; choose from {', '.join(map(str, choices))}")
    return value  # type: ignore[no-any-return]


def dict_arg(args: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = args.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadArgs(f"argument {key!r} must be an object, not {value!r}")
    return value


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'-inf' if low is None else low}..{'inf' if high is None else high}"
        raise BadArgs(f"argument {key!r} is {value}; it must be within {bounds}")
