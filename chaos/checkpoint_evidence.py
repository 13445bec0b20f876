"""What a training job's pods themselves wrote about their checkpoints, read straight from NATS:
the job's checkpoint pointer (KV ``jobq_checkpoints``), each version of which names the newest
checkpoint, its step and when the pod made it.

This is the judge of "work lost" in the ``node-kill-training`` experiment and the checkpoint
recovery tests: it shares nothing with the dispatcher's own ``Attempt.work_lost_s`` beyond the wire
contract. The work a failure threw away is measured from the kill (the time the action recorded)
back to the newest checkpoint the killed attempt had written by then (or, without any, to the
start of its work), and the checkpoint interval from the times of the attempt's own checkpoints.
The bucket keeps one version per key and the leader deletes checkpoint objects no pointer will
reference again, so the history is what a watcher saw (``watch_pointer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext

from broker import contract

__all__ = ["PointerLog", "interval_s", "pointer", "watch_pointer", "work_lost"]


async def pointer(js: JetStreamContext, job_id: str) -> contract.CheckpointPointer | None:
    """The job's checkpoint pointer as it stands (None: the job never took one)."""
    try:
        kv = await js.key_value(contract.BUCKET_CHECKPOINTS)
        entry = await kv.get(contract.checkpoint_pointer_key(job_id))
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.NotFoundError):
        return None
    if not entry.value:
        return None
    return contract.CheckpointPointer.model_validate_json(entry.value)


def interval_s(made: list[dt.datetime]) -> float | None:
    """The longest time between two successive checkpoints made at ``made`` (None: fewer than two)."""
    times = sorted(made)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    return max(gaps) if gaps else None


def work_lost(killed_at: dt.datetime, at_kill: contract.CheckpointPointer | None, attempt: int,
              work_started: dt.datetime) -> tuple[float, int | None]:
    """Seconds of work the kill threw away, and the step the killed attempt had saved: from its
    newest checkpoint made before the kill (the pointer as read at the kill), else from when it
    took the pointer, else from ``work_started`` (the pod's start, as its node reported it)."""
    since, step = work_started, None
    if at_kill is not None and at_kill.owner == attempt:
        if at_kill.seq and at_kill.at is not None:
            since, step = at_kill.at, at_kill.step
        elif at_kill.resumed_at is not None:
            since, step = at_kill.resumed_at, at_kill.resumed_step
    return max(0.0, (killed_at - since).total_seconds()), step


@dataclasses.dataclass
class PointerLog:
    """Every version of a job's pointer seen while watching it (``watch_pointer``)."""

    job_id: str
    versions: list[contract.CheckpointPointer] = dataclasses.field(default_factory=list)

    def of(self, attempt: int) -> list[contract.CheckpointPointer]:
        """The versions written while ``attempt`` owned the pointer, oldest first."""
        return [p for p in self.versions if p.owner == attempt]

    def last_of(self, attempt: int) -> contract.CheckpointPointer | None:
        mine = self.of(attempt)
        return mine[-1] if mine else None

    def owners(self) -> list[int]:
        return [p.owner for p in self.versions]


@contextlib.asynccontextmanager
async def watch_pointer(js: JetStreamContext, job_id: str) -> AsyncIterator[PointerLog]:
    """Record every change of the job's pointer while the block runs (the bucket keeps one
    version per key: a watcher started before the job is the only way to see them all)."""
    log = PointerLog(job_id)
    kv = await js.key_value(contract.BUCKET_CHECKPOINTS)
    watcher: Any = await kv.watch(contract.checkpoint_pointer_key(job_id))

    async def follow() -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                log.versions.append(contract.CheckpointPointer.model_validate_json(entry.value))

    task = asyncio.create_task(follow())
    try:
        yield log
        await asyncio.sleep(0.3)  # the last update in flight
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await watcher.stop()


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
