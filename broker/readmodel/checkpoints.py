"""The newest checkpoint of a job's running attempt, from its live pointer in KV ``jobq_checkpoints``.

An attempt's pod moves the job's pointer (``contract.CheckpointPointer``, key = job id) as it
writes checkpoints; when the attempt ends the dispatcher keeps a summary on the attempt
(``Attempt.checkpoints``). Readers show the pointer only while the job's current attempt runs, and
only when that attempt owns it: a superseded attempt's claim, or the pointer of an attempt that has
not restored yet, is not the running attempt's. Like progress (``progress.py``), a value that is not
a pointer, names another job, or holds numbers no JSON reader keeps exactly is ignored: pods write
this bucket. See docs/design/checkpoints.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import Field, ValidationError

from broker import contract


class LiveCheckpoint(contract.AttemptCheckpoints):
    """The running attempt's checkpoints so far (``AttemptCheckpoints``, read from the live pointer)."""

    job_id: str
    attempt: int = Field(ge=1, description="The running attempt, which owns the job's pointer")


async def of_attempt(js: JetStreamContext, job_id: str, attempt: int) -> LiveCheckpoint | None:
    """The checkpoints of ``attempt`` of ``job_id`` if it owns the job's pointer."""
    try:
        kv = await js.key_value(contract.BUCKET_CHECKPOINTS)
    except nats.js.errors.BucketNotFoundError:
        return None
    return await _read(kv, job_id, attempt)


def _running(record: contract.JobRecord) -> contract.Attempt | None:
    """The record's current attempt while it has not ended (an ended one carries its summary)."""
    attempt = record.current
    return attempt if attempt is not None and not attempt.state.is_final else None


async def current(js: JetStreamContext, record: contract.JobRecord) -> LiveCheckpoint | None:
    """The live checkpoint of the record's running attempt (None: it has not ended, restored or
    written one; or it has ended, and ``Attempt.checkpoints`` says what it did)."""
    attempt = _running(record)
    if attempt is None:
        return None
    return await of_attempt(js, record.spec.id, attempt.number)


async def of_running(
    js: JetStreamContext, records: Iterable[contract.JobRecord]
) -> dict[str, LiveCheckpoint]:
    """The live checkpoints of those of ``records`` whose current attempt runs, by job id: one KV
    read each, concurrently."""
    running = [(r.spec.id, a.number) for r in records if (a := _running(r)) is not None]
    if not running:
        return {}
    try:
        kv = await js.key_value(contract.BUCKET_CHECKPOINTS)
    except nats.js.errors.BucketNotFoundError:
        return {}
    found = await asyncio.gather(*(_read(kv, job_id, attempt) for job_id, attempt in running))
    return {c.job_id: c for c in found if c is not None}


def work_lost(record: contract.JobRecord) -> float | None:
    """The seconds of work the job's disrupted attempts threw away, summed (None: none recorded)."""
    lost = [a.work_lost_s for a in record.attempts if a.work_lost_s is not None]
    return sum(lost) if lost else None


def of_pointer(pointer: contract.CheckpointPointer, job_id: str, attempt: int) -> LiveCheckpoint | None:
    """What a pointer says of ``attempt`` of ``job_id``: None unless it is that job's and owned by
    that attempt (its numbers are bounded by the contract: ``MAX_CHECKPOINT_STEP``)."""
    if pointer.job_id != job_id:
        return None
    summary = contract.attempt_checkpoints(pointer, attempt)
    if summary is None:
        return None
    return LiveCheckpoint(job_id=job_id, attempt=attempt, **dict(summary))


async def _read(kv: KeyValue, job_id: str, attempt: int) -> LiveCheckpoint | None:
    try:
        entry = await kv.get(contract.checkpoint_pointer_key(job_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    try:
        pointer = contract.CheckpointPointer.model_validate_json(entry.value or b"")
    except ValidationError:
        return None
    return of_pointer(pointer, job_id, attempt)
