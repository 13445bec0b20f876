"""Which job records are stored, read from the KV stream's per-subject state (no consumer).

nats-py's ``KeyValue.keys()`` watches the bucket and stops at the first message whose
``num_pending`` is 0; while the dispatcher writes records that can come before the rest, and the
listing is short or empty (seen as an empty ``jobq list`` right after jobs ended). The stream's
own subject counts have no such race.
"""

from __future__ import annotations

import asyncio

import nats.js.errors
from nats.js import JetStreamContext

from broker import contract

_KV_PREFIX = f"$KV.{contract.BUCKET_JOBS}."


async def job_ids(js: JetStreamContext) -> list[str]:
    """The ids that have a message in bucket ``jobq_jobs`` (a deleted one's marker too: its
    ``get`` finds nothing). The server lists up to 100,000 subjects in one answer."""
    info = await js.stream_info(f"KV_{contract.BUCKET_JOBS}", subjects_filter=f"{_KV_PREFIX}>")
    subjects = info.state.subjects or {}
    return [subject[len(_KV_PREFIX):] for subject in subjects]


READ_AT_ONCE = 256
"""Records read concurrently by ``kept_records`` (one KV get each)."""


async def kept_records(js: JetStreamContext) -> list[contract.JobRecord]:
    """Every kept record, oldest first: ``job_ids``, then their values, ``READ_AT_ONCE`` at a time
    (a deleted or expiring one is left out: docs/design/retention.md)."""
    kv = await js.key_value(contract.BUCKET_JOBS)

    async def read(job_id: str) -> contract.JobRecord | None:
        try:
            entry = await kv.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        record = contract.JobRecord.model_validate_json(entry.value or b"{}")
        return None if record.expired else record

    ids = await job_ids(js)
    records: list[contract.JobRecord] = []
    for start in range(0, len(ids), READ_AT_ONCE):
        read_now = await asyncio.gather(*(read(job_id) for job_id in ids[start:start + READ_AT_ONCE]))
        records += [r for r in read_now if r is not None]
    return sorted(records, key=lambda r: r.submitted_at)
