"""Scrape every dispatcher of an embedded stack, and tell its leader from the lease in KV."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import nats.js.errors
from prometheus_client.parser import text_string_to_metric_families

from broker import contract, metrics
from broker.dispatcher.lease import LEASE_KEY
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.http.helpers import Samples


def instance(index: int) -> str:
    return f"dispatcher-{index}"


async def scrape(http: aiohttp.ClientSession, stack: Stack, index: int) -> Samples | None:
    """One dispatcher's /metrics, or None if it does not answer within 2 s (paused, killed)."""
    url = f"http://127.0.0.1:{stack.http_ports[index]}/metrics"
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            assert response.status == 200
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


async def scrape_all(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Samples | None]:
    found = await asyncio.gather(*(scrape(http, stack, i) for i in sorted(stack.dispatchers)))
    return {instance(i): s for i, s in zip(sorted(stack.dispatchers), found, strict=True)}


async def lease_holder(client: JobqClient, stack: Stack) -> int | None:
    """The index of the dispatcher whose process the lease in KV names (alive or not)."""
    kv = await client.js.key_value(contract.BUCKET_LEADER)
    try:
        holder = ((await kv.get(LEASE_KEY)).value or b"").decode()
    except nats.js.errors.KeyNotFoundError:
        return None
    _, _, pid = holder.rpartition("-")
    return next((i for i, p in stack.dispatchers.items() if pid.isdigit() and p.pid == int(pid)), None)


async def wait_holder(client: JobqClient, stack: Stack, *, not_index: int | None = None) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = await lease_holder(client, stack)
        if found is not None and found != not_index:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("no dispatcher took the lease within 30 s")


def families(samples: Samples) -> set[str]:
    """The metric names of a scrape (``_total``, ``_bucket``... as exposed)."""
    return {name for name, _ in samples}


def leader_only_names(samples: Samples) -> set[str]:
    """The exposed names that belong to leader-only metrics."""
    out = set()
    for name in families(samples):
        base = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in metrics.METRICS:
                base = name.removesuffix(suffix)
        if base in metrics.METRICS and base not in metrics.EVERY_REPLICA:
            out.add(name)
    return out


def value(samples: Samples | None, name: str, **labels: str) -> float | None:
    """The sample of ``name`` whose labels include ``labels`` (None if absent; the sum if many)."""
    if samples is None:
        return None
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    return sum(found) if found else None
