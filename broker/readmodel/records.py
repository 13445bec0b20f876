"""Which job records are stored, read from the KV stream's per-subject state (no consumer).

nats-py's ``KeyValue.keys()`` watches the bucket and stops at the first message whose
``num_pending`` is 0; while the dispatcher writes records that can come before the rest, and the
listing is short or empty (seen as an empty ``jobq list`` right after jobs ended). The stream's
own subject counts have no such race.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from broker import contract

_KV_PREFIX = f"$KV.{contract.BUCKET_JOBS}."


async def job_ids(js: JetStreamContext) -> list[str]:
    """The ids that have a message in bucket ``jobq_jobs`` (a deleted one's marker too: its
    ``get`` finds nothing). The server lists up to 100,000 subjects in one answer."""
    info = await js.stream_info(f"KV_{contract.BUCKET_JOBS}", subjects_filter=f"{_KV_PREFIX}>")
    subjects = info.state.subjects or {}
    return [subject[len(_KV_PREFIX):] for subject in subjects]
