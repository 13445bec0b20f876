"""What a job's current attempt last reported of its progress, from KV ``jobq_progress``.

Each attempt's pod writes its own key (``contract.progress_key``); a job's progress is its current
attempt's only, so what a superseded attempt still writes never shows as the job's. A value whose
own job and attempt are not its key's is ignored too (a server without jobq's NATS users cannot
refuse the write). See docs/design/progress.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from broker import contract


async def of_attempt(js: JetStreamContext, job_id: str, attempt: int) -> contract.AttemptProgress | None:
    """The progress stored for attempt ``attempt`` of ``job_id``, if any."""
    try:
        kv = await js.key_value(contract.BUCKET_PROGRESS)
    except nats.js.errors.BucketNotFoundError:
        return None
    return await _read(kv, job_id, attempt)


async def current(js: JetStreamContext, record: contract.JobRecord) -> contract.AttemptProgress | None:
    """The progress of the record's current attempt (None before its first report)."""
    attempt = record.current
    if attempt is None:
        return None
    return await of_attempt(js, record.spec.id, attempt.number)


async def of_running(
    js: JetStreamContext, records: Iterable[contract.JobRecord]
) -> dict[str, contract.AttemptProgress]:
    """The current progress of those of ``records`` that are running, by job id: one KV read
    each, concurrently (a list shows progress only for its running jobs)."""
    running = [
        (r.spec.id, r.current.number) for r in records if r.phase == contract.JobPhase.RUNNING and r.current
    ]
    if not running:
        return {}
    try:
        kv = await js.key_value(contract.BUCKET_PROGRESS)
    except nats.js.errors.BucketNotFoundError:
        return {}
    found = await asyncio.gather(*(_read(kv, job_id, attempt) for job_id, attempt in running))
    return {p.job_id: p for p in found if p is not None}


async def _read(kv: KeyValue, job_id: str, attempt: int) -> contract.AttemptProgress | None:
    """The value under the attempt's key, if it is that attempt's progress."""
    try:
        entry = await kv.get(contract.progress_key(job_id, attempt))
    except nats.js.errors.KeyNotFoundError:
        return None
    try:
        progress = contract.AttemptProgress.model_validate_json(entry.value or b"")
    except ValidationError:
        return None
    if progress.job_id != job_id or progress.attempt != attempt:
        return None
    return progress
