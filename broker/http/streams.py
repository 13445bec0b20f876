"""The HTTP layer's read-only view of JetStream, and the fan-out behind ``/api/events``.

``job_events`` and ``dead_letters`` read stored messages by sequence (no consumers are created);
``EventHub`` holds one core NATS subscription on ``jobq.events.>`` and hands every event, plus
node changes from the metrics node poller, to each connected server-sent-events client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any

import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from broker import contract

log = structlog.get_logger("jobq.api")

Item = tuple[str, str | None, str]
"""(SSE event name, job id or None, JSON data)."""

CLOSE = "close"
"""Internal item that ends a client's stream (never sent)."""

MAX_EVENTS = 1000
"""At most this many events are returned for one job."""


async def job_events(js: JetStreamContext, job_id: str) -> list[contract.JobEvent]:
    """Every stored event of one job, oldest first (``next_by_subj`` reads, no consumer)."""
    subject = contract.event_subject(job_id)
    events: list[contract.JobEvent] = []
    seq = 1
    while len(events) < MAX_EVENTS:
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


@dataclasses.dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    seq: int
    letter: contract.DeadLetter


async def dead_letter(js: JetStreamContext, seq: int) -> contract.DeadLetter | None:
    """The dead letter stored under ``seq``, or None (no such message, or not a letter)."""
    try:
        raw = await js.get_msg(contract.STREAM_DEAD, seq)
    except nats.js.errors.NotFoundError:
        return None
    try:
        return contract.DeadLetter.model_validate_json(raw.data or b"")
    except ValidationError:
        return None


async def dead_letters(
    js: JetStreamContext, *, limit: int, offset: int = 0, reason: str | None = None
) -> tuple[list[StoredDeadLetter], int]:
    """Newest dead letters first (optionally of one reason), and how many the stream holds."""
    try:
        info = await js.stream_info(contract.STREAM_DEAD)
    except nats.js.errors.NotFoundError:
        return [], 0
    found: list[StoredDeadLetter] = []
    skipped = 0
    seq = info.state.last_seq
    while seq >= max(info.state.first_seq, 1) and len(found) < limit:
        try:
            raw = await js.get_msg(contract.STREAM_DEAD, seq)
        except nats.js.errors.NotFoundError:
            seq -= 1
            continue
        seq -= 1
        if not raw.data:
            continue
        try:
            letter = contract.DeadLetter.model_validate_json(raw.data)
        except ValidationError:
            continue
        if reason is not None and letter.reason.value != reason:
            continue
        if skipped < offset:
            skipped += 1
            continue
        found.append(StoredDeadLetter(seq=raw.seq or 0, letter=letter))
    return found, int(info.state.messages or 0)


class EventHub:
    """One NATS subscription, many SSE clients; a slow client loses old events, never blocks."""

    def __init__(self, *, client_buffer: int = 1000) -> None:
        self._clients: set[asyncio.Queue[Item]] = set()
        self._buffer = client_buffer
        self._sub: Any = None
        self.closed = asyncio.Event()

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self, nc: NATS) -> None:
        self._sub = await nc.subscribe(contract.EVENTS_WILDCARD, cb=self._on_msg)

    async def stop(self) -> None:
        """Unsubscribe, and tell every client handler to end its response."""
        self.closed.set()
        for queue in self._clients:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((CLOSE, None, ""))
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = contract.JobEvent.model_validate_json(msg.data)
        except ValidationError:
            return
        self.publish("job", event.model_dump_json(), job_id=event.job_id)

    def publish(self, kind: str, data: str, *, job_id: str | None = None) -> None:
        for queue in self._clients:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(("lagged", None, json.dumps({"message": "events were dropped; refetch"})))
            queue.put_nowait((kind, job_id, data))

    def subscribe(self) -> asyncio.Queue[Item]:
        queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=self._buffer)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Item]) -> None:
        self._clients.discard(queue)
