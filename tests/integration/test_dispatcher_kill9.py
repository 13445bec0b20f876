"""``kill -9`` of the leading dispatcher at random points, 20 times, while jobs keep flowing.

Two dispatchers (one leads, one stands by); a stream of short ``demo.witness`` jobs (0.5-2 s)
is published throughout; 20 times, at a random moment after a leader took over (uniform
0..MAX_DELAY_S, seeded: the seed is printed and ``JOBQ_KILL9_SEED`` repeats a run), the current
lease holder is SIGKILLed and started again at once. A kill right after a takeover lands in the
new leader's start-up resync, a later one in steady dispatching, result acceptance or retries.
At the end the independent checker (tests/checker.py) must find zero lost, duplicated, unproven
and stale-visible results among every job whose publish was acked.

Faster than default, and why: the lease TTL is 3 s (tests.conftest.FAST_ENV; the default is 5 s)
so that a takeover after a kill takes ~3-4 s instead of ~5-6 s and 20 kills fit in about two
minutes. Every lease timing (renewal, request deadline, validity, standby polling) is a fixed
fraction of the TTL, so the same timeline runs, only shorter.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import time
from pathlib import Path

import nats.js.errors
import pytest

from broker import contract
from broker.dispatcher.lease import LEASE_KEY
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests import checker
from tests.conftest import running_stack, submitter_client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

KILLS = 20
MAX_DELAY_S = 5.0
"""A kill lands uniformly within this long after the previous takeover: early ones in the new
leader's start-up (resync, adopting pods), later ones in steady dispatching."""
JOB_SECONDS = (0.5, 1.0, 1.5, 2.0)
SUBMIT_EVERY_S = 0.9
"""One job per this many seconds: about two in flight on 2 shared cores (each pod is a Python
process; a faster flow starves the dispatchers' own start-up, which the test is not about)."""


async def current_leader(
    client: JobqClient, stack: Stack, *, not_pid: int | None = None
) -> tuple[int, int] | None:
    """(index, pid) of the live dispatcher of this stack that holds the lease, if any."""
    kv = await client.js.key_value(contract.BUCKET_LEADER)
    try:
        holder = ((await kv.get(LEASE_KEY)).value or b"").decode()
    except nats.js.errors.KeyNotFoundError:
        return None
    _, _, raw_pid = holder.rpartition("-")
    for index, process in stack.dispatchers.items():
        if raw_pid.isdigit() and process.pid == int(raw_pid) != not_pid and process.returncode is None:
            return index, process.pid
    return None


async def wait_leader(
    client: JobqClient, stack: Stack, *, not_pid: int | None = None, timeout_s: float = 30
) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await current_leader(client, stack, not_pid=not_pid)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no live dispatcher took the lease within {timeout_s}s (old pid {not_pid})")
        await asyncio.sleep(0.05)


def in_flight(ledger: Path, acked: dict[str, int]) -> tuple[int, int]:
    """Per the ledger and the acks: (attempts running now, acked jobs not ended yet)."""
    lines, _ = checker.read_ledger(ledger)
    started = {(ln.job_id, ln.attempt) for ln in lines if ln.event == "start"}
    ended = {(ln.job_id, ln.attempt) for ln in lines if ln.event == "end"}
    return len(started - ended), len(set(acked) - {job_id for job_id, _ in ended})


async def test_kill9_the_leader_20_times_with_jobs_flowing(tmp_path: Path) -> None:
    seed = int(os.environ.get("JOBQ_KILL9_SEED") or random.SystemRandom().randrange(2**32))
    print(f"dispatcher kill -9 test: seed {seed} (JOBQ_KILL9_SEED={seed} repeats the delays)")
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    acked: dict[str, int] = {}
    stop = asyncio.Event()

    async with (
        running_stack(tmp_path, dispatchers=2, nodes=3) as stack,
        submitter_client(stack, name="kill9-test") as client,
    ):

        async def flow() -> None:
            n = 0
            while not stop.is_set():
                specs = checker.witness_specs(1, ledger, seconds=JOB_SECONDS, prefix="k9", start=n)
                acked.update(await checker.submit_witnessed(client, specs))
                n += 1
                await asyncio.sleep(SUBMIT_EVERY_S)

        flowing = asyncio.create_task(flow())
        kills: list[dict[str, float]] = []
        try:
            await wait_leader(client, stack)
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.0, MAX_DELAY_S))
                index, pid = await wait_leader(client, stack)
                running, outstanding = in_flight(ledger, acked)
                stack.signal_dispatcher(index, signal.SIGKILL)
                killed = time.monotonic()
                await stack.dispatchers[index].wait()
                await stack.start_dispatcher(index)
                await wait_leader(client, stack, not_pid=pid)
                took = time.monotonic() - killed
                kills.append({"running": running, "outstanding": outstanding, "takeover_s": took})
                assert not flowing.done(), flowing.exception()
        finally:
            stop.set()
            await flowing

        report = await checker.check(client, acked=acked, ledger=ledger, timeout_s=120)

    takeovers = [k["takeover_s"] for k in kills]
    print(
        f"kills {len(kills)}; at each kill, attempts running {[int(k['running']) for k in kills]}, "
        f"acked jobs not ended {[int(k['outstanding']) for k in kills]}; "
        f"takeover p50 {statistics.median(takeovers):.2f}s max {max(takeovers):.2f}s"
    )
    print(f"checker: {report.summary()}")
    assert len(kills) == KILLS
    assert report.defects == 0, report.describe()
    assert report.jobs == len(acked) >= 80, "too few jobs flowed for the kills to mean anything"
    # The kills hit work: jobs outstanding at (nearly) every kill, pods running at some of them.
    assert sum(1 for k in kills if k["outstanding"]) >= KILLS - 2, kills
    assert sum(1 for k in kills if k["running"]) >= 3, kills
    assert report.summary()["ran"] >= report.jobs
