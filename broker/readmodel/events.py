"""A job's stored events, read from stream JOBQ_EVENTS by sequence (no consumer is created)."""

from __future__ import annotations

import contextlib

import nats.js.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from broker import contract

MAX_EVENTS = 1000
"""The HTTP API returns at most this many events of one job."""


async def job_events(
    js: JetStreamContext, job_id: str, *, limit: int | None = MAX_EVENTS
) -> list[contract.JobEvent]:
    """Every stored event of one job (at most ``limit``), oldest first; a message that is not an
    event is skipped."""
    return await stored_events(js, contract.event_subject(job_id), limit=limit)


async def stored_events(
    js: JetStreamContext, subject: str = contract.EVENTS_WILDCARD, *, limit: int | None = None
) -> list[contract.JobEvent]:
    """The stored events on ``subject`` (a wildcard reads every job's), oldest first, at most
    ``limit``: ``next_by_subj`` reads, so no consumer is created. A message that is not an event
    is skipped."""
    events: list[contract.JobEvent] = []
    seq = 1
    while limit is None or len(events) < limit:
        try:
            raw = await js.get_msg(contract.STREAM_EVENTS, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        if raw.data:
            with contextlib.suppress(ValidationError):
                events.append(contract.JobEvent.model_validate_json(raw.data))
        if raw.seq is None:
            break
        seq = raw.seq + 1
    return events
