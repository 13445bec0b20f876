"""The worker runtime: run one task attempt inside a pod (``python -m workers.runner``).

Environment (all strings)::

    JOBQ_NATS_URL        nats://host:port, or a comma-separated list (default nats://127.0.0.1:4222)
    JOBQ_JOB_ID          the job's id                     JOBQ_ATTEMPT   attempt number, >= 1
    JOBQ_TASK            a key of contract.BUILTIN_TASKS or 'package.module:function'
    JOBQ_ARGS            the task's arguments, a JSON object (default {}); or
    JOBQ_ARGS_FROM=record  read them from the job's record in KV bucket jobq_jobs (the dispatcher
                         sets this when they are bigger than contract.MAX_INLINE_ARGS_BYTES)
    JOBQ_NODE            the node running the pod (optional, reported in heartbeats and results)
    JOBQ_POD             the pod's name (set by the dispatcher; default contract.pod_name(job, attempt))
    JOBQ_POD_UID         the pod's uid (the node agent's, or Kubernetes' metadata.uid); optional
    JOBQ_HEARTBEAT_S     seconds between heartbeats (default 1.0)
    JOBQ_NATS_CREDS      a NATS credentials file; or JOBQ_NATS_USER + JOBQ_NATS_PASSWORD; or
    JOBQ_NATS_TOKEN      (all optional)
    JOBQ_NATS_WAIT_S     give up connecting after this many seconds (default 30)

The first nine are the contract's ENV_* constants. It connects to NATS first (and reads the
arguments from the job record if told to), starts heart-beating on ``contract.heartbeat_subject``,
resolves and runs the task, creates ``contract.TaskResult`` in ``jobq_results`` once and exits.
Every result and artifact is stamped with its writer (``contract.Writer``: pod, pod uid, node and
the machine's boot id, from /proc/sys/kernel/random/boot_id); a result key that holds another
writer's result is never overwritten (exit EXIT_RESULT_EXISTS). The exit code is the interface to
the dispatcher: see the EXIT_* constants; a task can choose its own with TaskExit.
SIGTERM/SIGINT stop the attempt (an async task is cancelled; a thread cannot be, so the process
exits without waiting for it) with exit code 128 + signal; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from broker import contract
from workers import heartbeat, results, tasks
from workers.tasks import registry

EXIT_OK = 0
EXIT_TASK_FAILED = contract.EXIT_TASK_FAILED
"""The task raised: a traceback is on stderr. Retried under the job's retry policy."""
EXIT_BAD_ARGS = contract.EXIT_BAD_ARGS
"""The environment or JOBQ_ARGS is invalid, or the task raised tasks.BadArgs. Not retried."""
EXIT_TASK_NOT_FOUND = contract.EXIT_TASK_NOT_FOUND
"""JOBQ_TASK is no built-in and cannot be imported. Not retried."""
EXIT_NATS_UNREACHABLE = contract.EXIT_NATS_UNREACHABLE
"""NATS could not be reached within JOBQ_NATS_WAIT_S, or the result could not be written."""
EXIT_RESULT_EXISTS = contract.EXIT_RESULT_EXISTS
"""Another writer's result is already stored under this attempt's key: it was left alone."""
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

log = structlog.get_logger("workers.runner")
_T = TypeVar("_T")


class SettingsError(ValueError):
    """The runner's environment is incomplete or invalid."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerSettings:
    job_id: str
    attempt: int
    task: str
    args: dict[str, Any]
    args_in_record: bool = False
    """``args`` is still to be read from the job's record (JOBQ_ARGS_FROM=record)."""
    nats_servers: tuple[str, ...] = (DEFAULT_NATS_URL,)
    node: str | None = None
    pod: str = ""
    """The pod's name (JOBQ_POD; default ``contract.pod_name(job_id, attempt)``)."""
    pod_uid: str = ""
    """The pod's uid (JOBQ_POD_UID), "" when not given."""
    heartbeat_s: float = 1.0
    """Seconds between heartbeats."""
    connect_wait_s: float = 30.0
    """Seconds to keep trying to reach NATS before exiting with EXIT_NATS_UNREACHABLE."""
    auth: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    """nats.connect() credentials, from contract.nats_auth_options."""

    def writer(self, *, boot_id: str = "") -> contract.Writer:
        """Who this attempt's outputs are stamped with."""
        return contract.Writer(pod=self.pod, pod_uid=self.pod_uid, node=self.node, boot_id=boot_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RunnerSettings:
        def required(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                raise SettingsError(f"{name} is not set")
            return value

        def number(name: str, default: float) -> float:
            raw = environ.get(name, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number") from None
            if not value > 0 or value == float("inf"):
                raise SettingsError(f"{name}={raw!r} must be a positive number")
            return value

        raw_attempt = required(contract.ENV_ATTEMPT)
        if not raw_attempt.isdigit() or int(raw_attempt) < 1:
            raise SettingsError(f"{contract.ENV_ATTEMPT}={raw_attempt!r} is not a positive integer")
        raw_args = environ.get(contract.ENV_ARGS, "").strip()
        args_from = environ.get(contract.ENV_ARGS_FROM, "").strip()
        if args_from and args_from != contract.ARGS_FROM_RECORD:
            raise SettingsError(f"{contract.ENV_ARGS_FROM}={args_from!r}: the only source is "
                                f"{contract.ARGS_FROM_RECORD!r}")
        if args_from and raw_args:
            raise SettingsError(f"set {contract.ENV_ARGS} or {contract.ENV_ARGS_FROM}, not both")
        args = parse_args(raw_args or "{}", source=contract.ENV_ARGS)
        servers = tuple(s.strip() for s in environ.get(contract.ENV_NATS_URL, "").split(",") if s.strip())
        job_id, attempt = required(contract.ENV_JOB_ID), int(raw_attempt)
        return cls(job_id=job_id, attempt=attempt,
                   task=required(contract.ENV_TASK), args=args, args_in_record=bool(args_from),
                   nats_servers=servers or (DEFAULT_NATS_URL,),
                   node=environ.get(contract.ENV_NODE) or None,
                   pod=environ.get(contract.ENV_POD, "").strip() or contract.pod_name(job_id, attempt),
                   pod_uid=environ.get(contract.ENV_POD_UID, "").strip(),
                   heartbeat_s=number("JOBQ_HEARTBEAT_S", 1.0),
                   connect_wait_s=number("JOBQ_NATS_WAIT_S", 30.0),
                   auth=contract.nats_auth_options(_without_missing_pod_creds(environ)))


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    """The machine's boot id (a new one after every reboot); "" where it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def parse_args(raw: str | bytes, *, source: str) -> dict[str, Any]:
    """A task's arguments: a JSON object (SettingsError otherwise)."""
    try:
        args = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise SettingsError(f"{source} must be a JSON object, not {type(args).__name__}")
    return args


async def read_args_from_record(nc: NATS, job_id: str) -> dict[str, Any]:
    """``spec.args`` of the job's record in bucket jobq_jobs. SettingsError if there is no such
    record or it has no arguments; NATS errors (unreachable, timeout) are raised as they are."""
    source = f"{contract.BUCKET_JOBS}[{job_id}].spec.args"
    try:
        kv = await nc.jetstream(timeout=10).key_value(contract.BUCKET_JOBS)
        entry = await kv.get(job_id)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        raise SettingsError(f"{source}: the job has no record") from None
    try:
        record = json.loads(entry.value or b"")
        raw = record["spec"]["args"]
    except (ValueError, TypeError, KeyError) as exc:
        raise SettingsError(f"{source}: the record is unreadable: {exc!r}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{source} must be a JSON object, not {type(raw).__name__}")
    return raw


def _without_missing_pod_creds(environ: Mapping[str, str]) -> Mapping[str, str]:
    """Drop JOBQ_NATS_CREDS when it names the pod's optional creds mount and the operator's
    NATS Secret has no ``creds`` key (see contract.POD_NATS_CREDS_PATH); any other path is kept."""
    if environ.get("JOBQ_NATS_CREDS") == contract.POD_NATS_CREDS_PATH and not os.path.exists(
            contract.POD_NATS_CREDS_PATH):
        return {k: v for k, v in environ.items() if k != "JOBQ_NATS_CREDS"}
    return environ


class NatsUnreachable(ConnectionError):
    pass


async def connect(settings: RunnerSettings) -> NATS:
    """Connect (retrying forever under the hood) or raise NatsUnreachable after the wait."""
    last_error: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if not last_error:
            log.warning("nats_error", error=repr(exc))
        last_error[:] = [exc]

    async def on_disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    nc = NATS()
    try:
        await asyncio.wait_for(nc.connect(
            servers=list(settings.nats_servers), name=f"jobq-runner {settings.job_id}.{settings.attempt}",
            connect_timeout=2, reconnect_time_wait=1, max_reconnect_attempts=-1,
            error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
            **settings.auth), timeout=settings.connect_wait_s)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        cause = last_error[-1] if last_error else exc
        raise NatsUnreachable(f"cannot reach NATS at {', '.join(settings.nats_servers)} within "
                              f"{settings.connect_wait_s:g} s (last error: {cause!r})") from exc
    log.info("nats_connected", server=str(nc.connected_url.netloc if nc.connected_url else ""))
    return nc


class RunnerContext:
    """The TaskContext the runner gives a task; its blocking methods are for the task's thread.

    Artifacts live under ``contract.artifact_key(job_id, attempt, name)``, stamped with
    ``writer``; another job's are read from its accepted attempt only."""

    def __init__(self, *, job_id: str, attempt: int, node: str | None, writer: contract.Writer,
                 progress: heartbeat.ProgressReporter, artifacts: results.ArtifactStore,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.node = node
        self.writer = writer
        self._progress = progress
        self._artifacts = artifacts
        self._loop = loop

    def progress(self, fraction: float, message: str = "") -> None:
        self._progress.report(fraction, message)

    def save_artifact(self, name: str, data: bytes) -> str:
        return self._blocking(self.asave_artifact(name, data))

    def load_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        return self._blocking(self.aload_artifact(name, job_id=job_id))

    async def asave_artifact(self, name: str, data: bytes) -> str:
        results.check_artifact_name(name)
        key = contract.artifact_key(self.job_id, self.attempt, name)
        await self._artifacts.put(key, bytes(data), writer=self.writer)
        log.info("artifact_saved", artifact=key, size=len(data))
        return key

    async def aload_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        results.check_artifact_name(name)
        if job_id is None:
            attempt, writer = self.attempt, self.writer
            whose = "this attempt's pod"
        else:
            attempt, writer = await self._artifacts.accepted(job_id)
            whose = f"the pod of {job_id}'s accepted attempt {attempt}"
        key = contract.artifact_key(job_id or self.job_id, attempt, name)
        data, stamped = await self._artifacts.get(key)
        if stamped != writer:
            by = stamped.model_dump() if stamped is not None else "no stamped writer"
            log.warning("artifact_rejected", artifact=key, reason="writer_mismatch", writer=by)
            raise tasks.ArtifactNotFound(f"artifact {key} was written by {by}, not by {whose}")
        return data

    def _blocking(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # the usual case: called from the task's thread
            running = None
        if running is self._loop:  # blocking here would deadlock the loop
            coroutine.close()
            raise RuntimeError("an async task must use 'await ctx.asave_artifact/aload_artifact'")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


class _Stop:
    """SIGTERM/SIGINT set ``event``; a second signal exits at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.event = asyncio.Event()
        self.signum = signal.SIGTERM
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.event.is_set():
            _hard_exit(128 + sig)
        log.warning("signal_received", signal=sig.name)
        self.signum = sig
        self.event.set()

    def remove(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(sig)


@dataclasses.dataclass(slots=True)
class _Outcome:
    code: int
    abandoned_thread: bool = False
    """A task thread is still running: the process must exit without joining it."""


async def run(environ: Mapping[str, str]) -> int:
    """Run one attempt as the environment describes; return the exit code."""
    try:
        settings = RunnerSettings.from_env(environ)
    except SettingsError as exc:
        _stderr(f"jobq-runner: {exc}")
        return EXIT_BAD_ARGS
    structlog.contextvars.bind_contextvars(
        component="worker", job_id=settings.job_id, attempt=settings.attempt, node=settings.node,
        pod=settings.pod)
    try:
        nc = await connect(settings)
    except NatsUnreachable as exc:
        _stderr(f"jobq-runner: {exc}")
        return EXIT_NATS_UNREACHABLE
    outcome = _Outcome(EXIT_TASK_FAILED)
    try:
        if settings.args_in_record:
            try:
                args = await read_args_from_record(nc, settings.job_id)
            except SettingsError as exc:
                _stderr(f"jobq-runner: {exc}")
                return EXIT_BAD_ARGS
            except (nats.errors.Error, TimeoutError) as exc:
                _stderr(f"jobq-runner: cannot read the arguments from the job record: {exc!r}")
                return EXIT_NATS_UNREACHABLE
            settings = dataclasses.replace(settings, args=args, args_in_record=False)
            log.info("args_read_from_record", keys=len(args))
        outcome = await _run_connected(nc, settings)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 5)
        if not nc.is_closed:
            await nc.close()
        if outcome.abandoned_thread:
            _hard_exit(outcome.code)
    return outcome.code


async def _run_connected(nc: NATS, settings: RunnerSettings) -> _Outcome:
    loop = asyncio.get_running_loop()
    progress = heartbeat.ProgressReporter()
    beat = heartbeat.Heartbeat(nc, job_id=settings.job_id, attempt=settings.attempt,
                               node=settings.node, progress=progress, interval_s=settings.heartbeat_s)
    beating = asyncio.create_task(beat.run(), name="heartbeat")
    stop = _Stop(loop)
    try:
        ctx = RunnerContext(job_id=settings.job_id, attempt=settings.attempt, node=settings.node,
                            writer=settings.writer(boot_id=read_boot_id()), progress=progress,
                            artifacts=results.ArtifactStore(nc.jetstream()), loop=loop)
        outcome = await _execute(nc, settings, ctx=ctx, stop=stop)
        if outcome.code == EXIT_OK:
            progress.report(1.0, "done")
        return outcome
    finally:
        stop.remove()
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await beat.beat()
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)


async def _execute(nc: NATS, settings: RunnerSettings, *, ctx: RunnerContext, stop: _Stop) -> _Outcome:
    started_at = contract.utcnow()
    thread = _Thread()
    resolving = asyncio.ensure_future(asyncio.to_thread(registry.resolve, settings.task))
    if not await _race(resolving, stop.event):
        return await _stopped(resolving, stop, thread_running=not resolving.done())
    try:
        function = resolving.result()
    except registry.TaskNotFound as exc:
        _stderr(f"jobq-runner: {exc}")
        log.error("task_not_found", task=settings.task, error=str(exc))
        return _Outcome(EXIT_TASK_NOT_FOUND)
    except Exception as exc:  # the task's module raised while being imported
        traceback.print_exception(exc, file=sys.stderr)
        log.error("task_failed", task=settings.task, error=repr(exc), exit_code=EXIT_TASK_FAILED)
        return _Outcome(EXIT_TASK_FAILED)
    log.info("task_started", task=settings.task)
    work = asyncio.ensure_future(_call(function, settings.args, ctx, thread=thread))
    if not await _race(work, stop.event):
        return await _stopped(work, stop, thread_running=thread.running)
    try:
        output = results.jsonable(work.result())
    except tasks.TaskExit as exc:
        if exc.code != EXIT_OK:
            _stderr(f"jobq-runner: {exc}")
            log.error("task_exited", task=settings.task, exit_code=exc.code, error=str(exc))
            return _Outcome(exc.code)
        output = {}
    except Exception as exc:  # any task failure is reported the same way
        traceback.print_exception(exc, file=sys.stderr)
        log.error("task_failed", task=settings.task, error=repr(exc), exit_code=EXIT_TASK_FAILED)
        return _Outcome(EXIT_TASK_FAILED)
    result = contract.TaskResult(job_id=settings.job_id, attempt=settings.attempt, node=settings.node,
                                 writer=ctx.writer, output=output, started_at=started_at,
                                 finished_at=contract.utcnow())
    try:
        revision = await results.write_result(nc.jetstream(), result)
    except results.ResultExists as exc:
        _stderr(f"jobq-runner: the task succeeded but its result was not stored: {exc}")
        log.error("result_exists", key=exc.key, reason="another_writer", error=str(exc),
                  exit_code=EXIT_RESULT_EXISTS)
        return _Outcome(EXIT_RESULT_EXISTS)
    except (results.ResultNotWritten, nats.errors.Error) as exc:
        _stderr(f"jobq-runner: the task succeeded but its result was not stored: {exc}")
        log.error("result_not_written", error=repr(exc))
        return _Outcome(EXIT_NATS_UNREACHABLE)
    duration_ms = round((result.finished_at - started_at).total_seconds() * 1000)
    log.info("task_succeeded", task=settings.task, revision=revision, duration_ms=duration_ms)
    return _Outcome(EXIT_OK)


async def _call(function: tasks.Task, args: dict[str, Any], ctx: RunnerContext, *,
                thread: _Thread) -> object:
    """Await an async task; run a sync one in a thread (so heartbeats go on)."""
    try:
        if inspect.iscoroutinefunction(function):
            return await function(args, ctx)
        outcome: object = await asyncio.to_thread(_call_sync, function, args, ctx, thread)
        if inspect.isawaitable(outcome):  # a callable object whose __call__ is async
            outcome = await outcome
        return outcome
    except SystemExit as exc:
        raise _task_exit(exc) from None


class _Thread:
    """Whether a sync task's thread is still running (threads cannot be cancelled)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.done = threading.Event()

    @property
    def running(self) -> bool:
        return self.started.is_set() and not self.done.is_set()


def _call_sync(function: tasks.Task, args: dict[str, Any], ctx: RunnerContext,
               thread: _Thread) -> object:
    thread.started.set()
    try:
        return function(args, ctx)
    except SystemExit as exc:  # sys.exit() in a task: keep its code
        raise _task_exit(exc) from None
    finally:
        thread.done.set()


def _task_exit(exc: SystemExit) -> tasks.TaskExit:
    if exc.code is None:
        return tasks.TaskExit(EXIT_OK)
    if isinstance(exc.code, int):
        return tasks.TaskExit(exc.code if 0 <= exc.code <= 255 else EXIT_TASK_FAILED)
    return tasks.TaskExit(EXIT_TASK_FAILED, str(exc.code))


async def _race(work: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait for ``work`` or ``stop``; True if the work finished."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return work.done()


async def _stopped(work: asyncio.Future[Any], stop: _Stop, *, thread_running: bool) -> _Outcome:
    code = 128 + stop.signum
    work.cancel()
    if not thread_running:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(work, 3)
    log.warning("task_terminated", exit_code=code, thread_abandoned=thread_running)
    _stderr(f"jobq-runner: stopped by {stop.signum.name}")
    return _Outcome(code, abandoned_thread=thread_running)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _hard_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def configure_logging() -> None:
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.dict_tracebacks, renderer],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True)


def main() -> None:
    configure_logging()
    sys.exit(asyncio.run(run(os.environ)))


if __name__ == "__main__":
    main()
