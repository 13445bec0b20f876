"""Answering NATS requests: the one way every jobq service does it (the dispatchers' log and job
requests, the auth callout). A leaf module: NATS only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Self

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

Answer = Callable[[Msg], Awaitable[bytes | None]]
"""The reply to one request, or None to send none."""


class Responder:
    """Answers requests on ``subjects`` in queue group ``queue`` (so one member answers each),
    each in its own task, at most ``concurrency`` at once. Requests without a reply subject are
    ignored; a reply that cannot be sent is dropped (the asker times out and may ask again)."""

    def __init__(self, nc: NATS, subjects: Sequence[str], *, queue: str, answer: Answer,
                 concurrency: int = 16, name: str = "request") -> None:
        self._nc = nc
        self._subjects = tuple(subjects)
        self._queue = queue
        self._answer = answer
        self._name = name
        self._slots = asyncio.Semaphore(concurrency)
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Self:
        for subject in self._subjects:
            self._subs.append(await self._nc.subscribe(subject, queue=self._queue, cb=self._on_request))
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        task = asyncio.create_task(self._serve(msg), name=self._name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        async with self._slots:
            reply = await self._answer(msg)
            if reply is not None:
                with contextlib.suppress(Exception):
                    await self._nc.publish(msg.reply, reply)
