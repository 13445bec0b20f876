"""Helpers for the HTTP tests: scrape and parse /metrics, wait for conditions, run jobs."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, base: str) -> tuple[Samples, dict[str, str]]:
    """(sample (name, labels) -> value, family name -> type) from /metrics."""
    async with http.get(f"{base}metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.2)


async def get_json(http: aiohttp.ClientSession, url: str, *, status: int = 200) -> Any:
    async with http.get(url) as response:
        body = await response.json()
        assert response.status == status, (url, response.status, body)
        return body


async def kill_busiest_node(stack: Stack, client: JobqClient, *, at_least: int = 3) -> tuple[str, float]:
    """SIGKILL the node agent running the most attempts once ``at_least`` run; (node, time)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [
            r
            for r in await client.list()
            if r.phase == contract.JobPhase.RUNNING
            and r.current
            and r.current.state == contract.AttemptState.RUNNING
            and r.current.node
        ]
        if len(running) >= at_least:
            node = collections.Counter(r.current.node for r in running if r.current).most_common(1)[0][0]
            assert node is not None
            killed_at = time.time()
            stack.signal_node(node, signal.SIGKILL)
            return node, killed_at
        await asyncio.sleep(0.1)
    raise AssertionError("jobs never ran")
