"""The fan-out behind ``/api/events`` (stored events and dead letters: ``broker.readmodel``).

``EventHub`` holds one core NATS subscription on ``jobq.events.>`` and hands every event, plus
node changes from the metrics node poller, to each connected server-sent-events client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from broker import contract

log = structlog.get_logger("jobq.api")

Item = tuple[str, str | None, str]
"""(SSE event name, job id or None, JSON data)."""

CLOSE = "close"
"""Internal item that ends a client's stream (never sent)."""


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
