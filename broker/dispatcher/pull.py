"""Pulling from a durable JetStream consumer without trusting message headers.

nats-py's ``PullSubscription.fetch`` takes any message with a ``Status`` header for a status
from the server: a submission published with ``Status: 408`` is silently dropped, one with
``Status: 500`` makes fetch raise and loses the rest of its batch, at every delivery, until
max_deliver gives up on all of them. Here a message is a delivery when its reply subject is a
JetStream ack subject (``$JS.ACK.…``), whatever its headers; the server's own status messages
(request expired, max bytes reached, leadership change) carry no reply subject and only end the
pull request they answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = structlog.get_logger("jobq.pull")

ACK_PREFIX = "$JS.ACK."


def is_delivery(msg: Msg) -> bool:
    """A message the consumer delivered (it can be acked), as opposed to a status message."""
    return bool(msg.reply) and msg.reply.startswith(ACK_PREFIX)


class Puller:
    """Deliveries of one durable pull consumer, one pull request of ``batch`` at a time."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        consumer: str,
        batch: int = 64,
        max_bytes: int = 16 * 1024 * 1024,
        expires_s: float = 1.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._max_bytes = max_bytes
        self._expires_s = expires_s
        self._inbox = nc.new_inbox()
        self._requests = itertools.count(1)
        self._sub: Subscription | None = None

    async def consume(
        self, stop: asyncio.Event, handle: Callable[[Msg], Awaitable[None]], *, what: str
    ) -> None:
        """Hand every delivery to ``handle``, one at a time (see ``consume_batches``)."""

        async def each(batch: list[Msg]) -> None:
            for msg in batch:
                await handle(msg)

        await self.consume_batches(stop, each, what=what)

    async def consume_batches(
        self, stop: asyncio.Event, handle: Callable[[list[Msg]], Awaitable[None]], *, what: str
    ) -> None:
        """Hand ``handle`` every delivery that has arrived at once (see ``batches``) until ``stop``;
        a NATS error pauses and pulls again, a closed connection ends it. ``handle`` settles each
        message (ack, nak or term) itself."""
        while not stop.is_set():
            try:
                async for batch in self.batches(stop):
                    await handle(batch)
            except nats.errors.ConnectionClosedError:
                return
            except nats.errors.Error as exc:
                log.warning("pull_failed", consumer=what, error=repr(exc))
                await asyncio.sleep(0.5)

    async def batches(self, stop: asyncio.Event) -> AsyncIterator[list[Msg]]:
        """Deliveries in lists until ``stop`` is set: each list holds what had arrived when the
        caller asked (at least one, at most ``batch``), so a lone submission is not held back
        waiting for company. The next pull request goes out as soon as one ends, before its last
        list is handed over, so the server sends while the caller works. Once ``stop`` is set the
        request in flight is drained (at most ``expires_s``), not left to time out unacked."""
        arrived: collections.deque[Msg] = collections.deque()
        wake = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            arrived.append(msg)
            wake.set()

        self._sub = await self._nc.subscribe(
            f"{self._inbox}.*",
            cb=on_message,
            pending_bytes_limit=4 * self._max_bytes,
            pending_msgs_limit=16 * self._batch,
        )
        try:
            reply, delivered = await self._request(), 0
            while True:
                if not arrived:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self._expires_s + 1.0)
                batch, ended = self._take(arrived, reply, room=self._batch - delivered)
                delivered += len(batch)
                if ended and not stop.is_set():
                    reply, delivered = await self._request(), 0
                if batch:
                    yield batch
                if ended and stop.is_set():
                    return
        finally:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _request(self) -> str:
        reply = f"{self._inbox}.{next(self._requests)}"
        request = {"batch": self._batch, "max_bytes": self._max_bytes, "expires": int(self._expires_s * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=reply)
        return reply

    @staticmethod
    def _take(arrived: collections.deque[Msg], reply: str, *, room: int) -> tuple[list[Msg], bool]:
        """The deliveries that have arrived for the request on ``reply``, at most ``room``; and
        whether the request has ended: fulfilled, answered by a status, or lost (nothing came for
        longer than it could last, as after a reconnect)."""
        if not arrived:
            return [], True
        batch: list[Msg] = []
        while arrived:
            msg = arrived.popleft()
            if is_delivery(msg):
                batch.append(msg)
                if len(batch) >= room:
                    return batch, True
            elif msg.subject == reply:
                return batch, True  # a status answering this request: expired, max bytes, leader change
            # else: a late status for an older request; its deliveries are taken all the same
        return batch, False
