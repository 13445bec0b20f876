"""The TaskContext the runner gives a task: progress, artifacts stamped with the pod's writer, and
the job's checkpoints (``workers.checkpoints``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from broker import contract
from workers import checkpoints, heartbeat, results, tasks

log = structlog.get_logger("workers.runner")
_T = TypeVar("_T")


class RunnerContext:
    """The TaskContext the runner gives a task; its blocking methods are for the task's thread.

    Artifacts live under ``contract.artifact_key(job_id, attempt, name)``, stamped with
    ``writer``; another job's are read from its accepted attempt only."""

    def __init__(self, *, job_id: str, attempt: int, node: str | None, writer: contract.Writer,
                 progress: heartbeat.ProgressReporter, artifacts: results.ArtifactStore,
                 checkpointer: checkpoints.Checkpointer, loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.node = node
        self.writer = writer
        self._progress = progress
        self._artifacts = artifacts
        self._checkpointer = checkpointer
        self._loop = loop
        self.saved: dict[str, str] = {}
        """Artifacts this attempt saved: name -> digest (listed in its result)."""

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
        self.saved[name] = contract.artifact_digest(bytes(data))
        log.info("artifact_saved", artifact=key, size=len(data))
        return key

    async def aload_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        results.check_artifact_name(name)
        writer: contract.Writer | None
        if job_id is None:
            attempt, writer, saved = self.attempt, self.writer, self.saved
            whose = "this attempt's pod"
        else:
            attempt, result = await self._artifacts.accepted(job_id)
            writer, saved = result.writer, result.artifacts
            whose = f"the pod of {job_id}'s accepted attempt {attempt}"
        key = contract.artifact_key(job_id or self.job_id, attempt, name)
        data, stamped = await self._artifacts.get(key)
        if stamped != writer:
            by = stamped.model_dump() if stamped is not None else "no stamped writer"
            log.warning("artifact_rejected", artifact=key, reason="writer_mismatch", writer=by)
            raise tasks.ArtifactNotFound(f"artifact {key} was written by {by}, not by {whose}")
        if saved.get(name) != contract.artifact_digest(data):
            log.warning("artifact_rejected", artifact=key, reason="digest_mismatch")
            raise tasks.ArtifactNotFound(f"artifact {key} holds bytes {whose} did not save")
        return data

    def checkpoint(self, state: bytes, *, step: int) -> None:
        self._blocking(self.acheckpoint(state, step=step))

    def restore(self) -> tasks.Restored | None:
        return self._blocking(self.arestore())

    async def acheckpoint(self, state: bytes, *, step: int) -> None:
        await self._checkpointer.checkpoint(state, step=step)

    async def arestore(self) -> tasks.Restored | None:
        return await self._checkpointer.restore()

    def _blocking(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # the usual case: called from the task's thread
            running = None
        if running is self._loop:  # blocking here would deadlock the loop
            coroutine.close()
            raise RuntimeError("an async task must use 'await ctx.asave_artifact/aload_artifact/"
                               "acheckpoint/arestore'")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
