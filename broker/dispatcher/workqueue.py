"""A work queue of job ids: de-duplicated, never the same key twice at once, with delays.

Like the Kubernetes Job controller's queue: a key that is added while it is being reconciled is
marked dirty and processed again once the current pass is done. Higher-priority jobs go first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class WorkQueue:
    def __init__(self, *, priority_of: Callable[[str], float] = lambda _: 0.0) -> None:
        self._priority_of = priority_of
        self._heap: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._queued: set[str] = set()
        self._in_flight: set[str] = set()
        self._dirty: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def add(self, key: str) -> None:
        if key in self._queued:
            return
        if key in self._in_flight:
            self._dirty.add(key)
            return
        self._queued.add(key)
        heapq.heappush(self._heap, (-self._priority_of(key), next(self._counter), key))
        self._nonempty.set()

    def add_after(self, key: str, delay_s: float) -> None:
        """Add ``key`` after ``delay_s``; an earlier pending timer for the key wins."""
        if delay_s <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_s
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def pending(self, key: str) -> bool:
        """``key`` will be reconciled without being added again: it is queued, being reconciled
        (and then again if marked dirty), or has a timer."""
        return key in self._queued or key in self._in_flight or key in self._timers

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> str:
        while not self._heap:
            self._nonempty.clear()
            await self._nonempty.wait()
        _, _, key = heapq.heappop(self._heap)
        self._queued.discard(key)
        self._in_flight.add(key)
        return key

    def done(self, key: str) -> None:
        self._in_flight.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
