"""A broker kill on a 3-server NATS with ``sync_interval: always`` (issue 12), judged by the
independent checker (tests/checker.py).

The stack runs on jobq's defaults, so every server must say ``sync_always: true`` in its own
``/varz``. Witness jobs are submitted the whole time (publish acks recorded). While some run, the
server leading the submission stream is SIGKILLed; once every stream and the JetStream meta group
have leaders on the survivors it is restarted with its store and must catch up. Then the server
leading the job records is SIGKILLed and restarted the same way (the quorum that carries on now
includes the server restarted before, so its store must be whole), and then the leader of the
JetStream meta group (the cluster's streams and consumers). At the end the checker reports
lost, duplicated, unproven and stale-visible jobs (all zero), and the three servers must hold the
same copy of every stream.

A SIGKILL loses what the process had not handed to the kernel; what the kernel had not written
to the disk dies only with the machine, which a test on one host cannot do. So this proves that
replication, leader failover and a restarted member's recovery lose no acknowledged write with
fsync-always on; the fsync itself is what ``sync_always`` in ``/varz`` vouches for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors
import pytest

from broker import contract
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack, StackConfig
from submitter.client import JobqClient
from tests.checker import check, submit_witnessed, witness_specs
from tests.conftest import FAST_ENV, submitter_client

pytestmark = pytest.mark.timeout(600)

SUBMIT_INTERVAL_S = 0.3
TAIL_JOBS = 10
"""Jobs submitted after the last restart, so work flows through the healed cluster too."""
LEADERS_TIMEOUT_S = 60.0


def say(line: str) -> None:
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"[broker-kill] {line}\n")
    stream.flush()


async def jsz(http: aiohttp.ClientSession, server: NatsServer) -> dict[str, Any]:
    async with http.get(
        f"{server.monitor_url}/jsz?streams=true", timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        data: dict[str, Any] = await response.json()
        return data


def local_streams(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """This server's own copy of each stream (name -> state)."""
    return {
        stream["name"]: stream["state"]
        for account in data.get("account_details", [])
        for stream in account.get("stream_detail", [])
    }


async def leaders(client: JobqClient) -> dict[str, str | None]:
    return {
        str(info.config.name): info.cluster.leader if info.cluster else None
        for info in await client.js.streams_info()
    }


async def wait_led_without(
    client: JobqClient, http: aiohttp.ClientSession, stack: Stack, victim: str
) -> float:
    """Seconds until every stream and the meta group have a leader other than ``victim``."""
    started = time.monotonic()
    survivors = [s for s in stack.nats_cluster if s.name != victim]
    seen: object = None
    while time.monotonic() - started < LEADERS_TIMEOUT_S:
        with contextlib.suppress(Exception):
            streams = await leaders(client)
            metas = {(await jsz(http, s)).get("meta_cluster", {}).get("leader") for s in survivors}
            seen = (streams, metas)
            if (
                all(leader not in (None, victim) for leader in [*streams.values(), *metas])
                and len(metas) == 1
            ):
                return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"no leaders without {victim} after {LEADERS_TIMEOUT_S}s: {seen}")


async def wait_current(client: JobqClient, name: str) -> float:
    """Seconds until ``name`` is a current replica of every stream again."""
    started = time.monotonic()
    lagging: list[str] = []
    while time.monotonic() - started < LEADERS_TIMEOUT_S:
        with contextlib.suppress(Exception):
            lagging = []
            for info in await client.js.streams_info():
                cluster = info.cluster
                peers = {p.name: p for p in (cluster.replicas or [])} if cluster else {}
                if cluster is None or (
                    cluster.leader != name and not (name in peers and peers[name].current)
                ):
                    lagging.append(str(info.config.name))
            if not lagging:
                return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} not current after {LEADERS_TIMEOUT_S}s on {lagging}")


async def same_copies(http: aiohttp.ClientSession, stack: Stack, *, timeout_s: float = 30) -> dict[str, Any]:
    """Every server holds the same messages of every stream (polled: the leader lease is renewed
    all the time). Returns one server's copy."""
    deadline = time.monotonic() + timeout_s
    differ: dict[str, list[Any]] = {}
    while True:
        copies = [local_streams(await jsz(http, s)) for s in stack.nats_cluster]
        names = set().union(*copies)
        differ = {
            n: [c.get(n, {}).get(k) for c in copies for k in ("messages", "first_seq", "last_seq")]
            for n in names
            if len(
                {
                    (
                        c.get(n, {}).get("messages"),
                        c.get(n, {}).get("first_seq"),
                        c.get(n, {}).get("last_seq"),
                    )
                    for c in copies
                }
            )
            > 1
        }
        if not differ:
            return copies[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"servers hold different copies after {timeout_s}s: {differ}")
        await asyncio.sleep(0.2)


async def running(client: JobqClient, ids: list[str]) -> int:
    records = await asyncio.gather(*(client.get(i) for i in ids))
    return sum(
        1
        for r in records
        if r is not None and r.current is not None and r.current.state == contract.AttemptState.RUNNING
    )


async def test_broker_kill_with_sync_always_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBQ_NATS_SYNC", raising=False)  # jobq's default, not the caller's choice
    ledger = tmp_path / "ledger.jsonl"
    stack = Stack(
        StackConfig(
            data_dir=tmp_path / "stack", nodes=3, nats_port=-1, http_port=0, nats_servers=3, env=FAST_ENV
        )
    )
    acked: dict[str, int] = {}
    stop_submitting = asyncio.Event()
    refused = 0
    try:
        await stack.start()
        for server in stack.nats_cluster:
            assert (await server.varz())["jetstream"]["config"].get("sync_always") is True, server.name
        async with (
            submitter_client(stack, name="test-broker-kill") as client,
            aiohttp.ClientSession() as http,
        ):

            async def submit_all() -> None:
                nonlocal refused
                n, tail = 0, TAIL_JOBS
                while tail > 0:
                    spec = witness_specs(1, ledger, seconds=(1.0, 2.0, 3.0)[n % 3], prefix="bk", start=n)
                    try:
                        acked.update(await submit_witnessed(client, spec))
                    except (nats.errors.Error, TimeoutError):
                        # Not acked: the publisher is told, and sends the same job again (same
                        # Nats-Msg-Id) until it is. Only acked jobs are the system's to keep.
                        refused += 1
                        await asyncio.sleep(1)
                        continue
                    n += 1
                    tail -= stop_submitting.is_set()
                    await asyncio.sleep(SUBMIT_INTERVAL_S)

            submitter = asyncio.create_task(submit_all())
            try:
                for role, stream in (
                    ("submissions", contract.STREAM_SUBMIT),
                    ("job records", f"KV_{contract.BUCKET_JOBS}"),
                    ("JetStream meta group", None),
                ):
                    deadline = time.monotonic() + 90
                    while await running(client, sorted(acked)) < 3:
                        assert time.monotonic() < deadline, "fewer than 3 jobs running after 90 s"
                        assert not submitter.done(), submitter
                        await asyncio.sleep(0.2)
                    meta = (await jsz(http, stack.nats_cluster[0]))["meta_cluster"]["leader"]
                    victim = meta if stream is None else (await leaders(client))[stream]
                    assert victim is not None
                    held = sorted(s for s, leader in (await leaders(client)).items() if leader == victim)
                    index = next(i for i, s in enumerate(stack.nats_cluster) if s.name == victim)
                    before = len(acked)
                    stack.signal_nats(index)
                    say(
                        f"killed {victim} (leader of the {role}; meta leader {meta == victim}; "
                        f"leading {len(held)} stream(s)) with {before} job(s) acked"
                    )
                    failover_s = await wait_led_without(client, http, stack, victim)
                    await asyncio.sleep(3)  # jobs keep flowing on two servers
                    await stack.start_nats(index)
                    restarted = stack.nats_cluster[index]
                    assert (await restarted.varz())["jetstream"]["config"].get("sync_always") is True
                    catch_up_s = await wait_current(client, victim)
                    say(
                        f"{victim}: leaders elsewhere after {failover_s:.1f}s; restarted, current after "
                        f"{catch_up_s:.1f}s; {len(acked) - before} job(s) acked meanwhile"
                    )
                stop_submitting.set()
                await asyncio.wait_for(submitter, 120)
            finally:
                submitter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await submitter

            report = await check(client, acked=acked, ledger=ledger, timeout_s=240)
            say(f"checker: {report.summary()}; publishes refused during elections: {refused}")
            assert report.jobs == len(acked) > 2 * TAIL_JOBS
            assert (report.lost, report.duplicated, report.unproven, report.stale_visible) == (
                [],
                [],
                [],
                [],
            ), report.describe()
            copy = await same_copies(http, stack)
            assert copy[contract.STREAM_SUBMIT]["messages"] == 0  # every submission became a record
            assert copy[f"KV_{contract.BUCKET_JOBS}"].get("num_subjects", 0) >= len(acked)
    finally:
        await stack.stop()
