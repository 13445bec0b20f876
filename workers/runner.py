"""The worker runtime: run one task attempt inside a pod (``python -m workers.runner``).

The environment it reads is described in ``workers.runner_settings``; the TaskContext a task
gets is ``workers.runner_context.RunnerContext``. It connects to NATS first (and reads the
arguments from the job record if told to), starts heart-beating on ``contract.heartbeat_subject``,
keeps the task's progress in ``jobq_progress`` (``workers.progress``),
resolves and runs the task, creates ``contract.TaskResult`` in ``jobq_results`` once and exits.
Every result and artifact is stamped with its writer (``contract.Writer``: pod, pod uid, node and
the machine's boot id, from /proc/sys/kernel/random/boot_id); a result key that holds another
writer's result is never overwritten (exit EXIT_RESULT_EXISTS). The exit code is the interface to
the dispatcher: see the EXIT_* constants; a task can choose its own with TaskExit. A task whose
checkpoints a newer attempt took (tasks.Superseded, docs/design/checkpoints.md) exits
EXIT_SUPERSEDED without a result.
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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from broker import contract, logsetup, natsutil
from workers import checkpoints, heartbeat, progress, results, runner_context, runner_settings, tasks
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
EXIT_SUPERSEDED = contract.EXIT_SUPERSEDED
"""The task raised tasks.Superseded: a newer attempt owns the job's checkpoints. No result."""

log = structlog.get_logger("workers.runner")


class NatsUnreachable(ConnectionError):
    pass


async def connect(settings: runner_settings.RunnerSettings) -> NATS:
    """Connect (retrying forever under the hood) or raise NatsUnreachable after the wait."""
    try:
        nc = await natsutil.connect(
            ",".join(settings.nats_servers), name=f"jobq-runner {settings.job_id}.{settings.attempt}",
            auth=settings.auth, nats_options=settings.tls, connect_timeout_s=2, reconnect_wait_s=1,
            inbox_prefix=contract.pod_inbox_prefix(settings.job_id, settings.attempt),
            give_up_after_s=settings.connect_wait_s)
    except ConnectionError as exc:
        raise NatsUnreachable(str(exc)) from exc
    log.info("nats_connected", server=str(nc.connected_url.netloc if nc.connected_url else ""))
    return nc


async def read_args_from_record(nc: NATS, job_id: str) -> dict[str, Any]:
    """``spec.args`` of the job's record in bucket jobq_jobs. runner_settings.SettingsError if there
    is no such record or it has no arguments; NATS errors (unreachable, timeout) are raised as they are."""
    source = f"{contract.BUCKET_JOBS}[{job_id}].spec.args"
    try:
        kv = await nc.jetstream(timeout=10).key_value(contract.BUCKET_JOBS)
        entry = await kv.get(job_id)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        raise runner_settings.SettingsError(f"{source}: the job has no record") from None
    try:
        record = json.loads(entry.value or b"")
        raw = record["spec"]["args"]
    except (ValueError, TypeError, KeyError) as exc:
        raise runner_settings.SettingsError(f"{source}: the record is unreadable: {exc!r}") from None
    if not isinstance(raw, dict):
        raise runner_settings.SettingsError(f"{source} must be a JSON object, not {type(raw).__name__}")
    return raw


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
        settings = runner_settings.RunnerSettings.from_env(environ)
    except runner_settings.SettingsError as exc:
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
            except runner_settings.SettingsError as exc:
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


async def _run_connected(nc: NATS, settings: runner_settings.RunnerSettings) -> _Outcome:
    loop = asyncio.get_running_loop()
    reporter = heartbeat.ProgressReporter()
    beat = heartbeat.Heartbeat(nc, job_id=settings.job_id, attempt=settings.attempt,
                               node=settings.node, progress=reporter, interval_s=settings.heartbeat_s)
    beating = asyncio.create_task(beat.run(), name="heartbeat")
    kept = progress.ProgressWriter(nc.jetstream(), job_id=settings.job_id, attempt=settings.attempt,
                                   progress=reporter)
    keeping = asyncio.create_task(kept.run(), name="progress")
    stop = _Stop(loop)

    async def progress_done() -> None:
        """The last progress, stored before the result: once the result is there the dispatcher
        ends the attempt and deletes the pod, so a runner still writing then would be killed."""
        reporter.report(1.0, "done")
        kept.close()
        await keeping
        await kept.flush(timeout_s=progress.FINAL_TIMEOUT_S)

    try:
        writer = settings.writer(boot_id=runner_settings.read_boot_id())
        artifacts = results.ArtifactStore(nc.jetstream())
        checkpointer = checkpoints.Checkpointer(
            nc.jetstream(), job_id=settings.job_id, attempt=settings.attempt, writer=writer,
            artifacts=artifacts)
        ctx = runner_context.RunnerContext(
            job_id=settings.job_id, attempt=settings.attempt, node=settings.node, writer=writer,
            progress=reporter, artifacts=artifacts, checkpointer=checkpointer, loop=loop)
        return await _execute(nc, settings, ctx=ctx, stop=stop, before_result=progress_done)
    finally:
        stop.remove()
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        kept.close()  # not cancel: see progress.ProgressWriter
        await keeping
        await beat.beat()
        await kept.flush(timeout_s=progress.FINAL_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)


async def _execute(nc: NATS, settings: runner_settings.RunnerSettings, *,
                   ctx: runner_context.RunnerContext, stop: _Stop,
                   before_result: Callable[[], Awaitable[None]]) -> _Outcome:
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
    except tasks.Superseded as exc:
        _stderr(f"jobq-runner: {exc}")
        log.warning("task_superseded", task=settings.task, exit_code=exc.code, reason="superseded")
        return _Outcome(exc.code)
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
                                 finished_at=contract.utcnow(), artifacts=dict(ctx.saved))
    await before_result()
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


async def _call(function: tasks.Task, args: dict[str, Any], ctx: runner_context.RunnerContext, *,
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


def _call_sync(function: tasks.Task, args: dict[str, Any], ctx: runner_context.RunnerContext,
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
    # A library's debug records (asyncio's "Using selector") would crowd the pod's log.
    logsetup.configure(fmt="auto", level="DEBUG", cache=True, library_level="INFO")


def main() -> None:
    configure_logging()
    sys.exit(asyncio.run(run(os.environ)))


if __name__ == "__main__":
    main()
