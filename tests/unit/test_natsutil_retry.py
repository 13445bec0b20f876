"""natsutil.retry: a budget of time, not of tries ("no responders" comes back at once during a
JetStream leader election, which takes seconds)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats.errors
import pytest

from broker import natsutil


def _failing_for(seconds: float) -> tuple[list[float], Callable[[], Awaitable[str]]]:
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    calls: list[float] = []

    async def call() -> str:
        calls.append(loop.time())
        if loop.time() < until:
            raise nats.errors.NoRespondersError
        return "stored"

    return calls, call


async def test_retries_through_an_outage_shorter_than_the_budget() -> None:
    calls, call = _failing_for(1.2)
    assert await natsutil.retry(call, budget_s=5, delay_s=0.05, max_delay_s=0.2) == "stored"
    assert len(calls) >= 3


async def test_gives_up_once_the_budget_is_spent() -> None:
    calls, call = _failing_for(60)
    with pytest.raises(nats.errors.NoRespondersError):
        await natsutil.retry(call, budget_s=0.6, delay_s=0.05, max_delay_s=0.1)
    assert len(calls) >= 4


async def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    async def call() -> None:
        calls.append(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        await natsutil.retry(call, budget_s=5)
    assert calls == [1]
