"""The work queue: de-duplication, one pass per key at a time, delays, priority."""

from __future__ import annotations

import asyncio

from broker.dispatcher.workqueue import WorkQueue


async def test_duplicates_are_dropped_while_queued() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("a")
    assert len(q) == 1


async def test_key_added_while_in_flight_comes_back_after_done() -> None:
    q = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")
    assert len(q) == 0
    q.done("a")
    assert await asyncio.wait_for(q.get(), 1) == "a"


async def test_higher_priority_first() -> None:
    prio = {"low": 0.0, "high": 5.0}
    q = WorkQueue(priority_of=prio.__getitem__)
    q.add("low")
    q.add("high")
    assert await q.get() == "high"


async def test_add_after_waits_and_earliest_timer_wins() -> None:
    q = WorkQueue()
    q.add_after("a", 10)
    q.add_after("a", 0.05)
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.close()
