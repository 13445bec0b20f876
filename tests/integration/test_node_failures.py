"""Node deaths, partitions and dispatcher crashes with real processes and real signals.

Every test ends with the same accounting: every job succeeded, exactly one accepted result per
job (one ``succeeded`` event), and node losses did not consume the application retry budget.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from broker import contract
from broker.dispatcher.lease import LEASE_KEY
from broker.embedded.stack import Stack
from broker.readmodel import recovery
from submitter.client import JobqClient
from tests.conftest import FAST_ENV, start_stack, submitter_client
from tests.integration.helpers import node_status, success_events, wait_running

pytestmark = pytest.mark.timeout(240)

NODE_TIMEOUT_S = float(FAST_ENV["JOBQ_NODE_TIMEOUT_S"])


async def submit_sleepers(client: JobqClient, n: int, *, seconds: float) -> list[str]:
    handles = [
        await client.submit(task="demo.sleep", args={"seconds": seconds, "progress_steps": 4})
        for _ in range(n)
    ]
    return [h.id for h in handles]


async def assert_exactly_once(
    client: JobqClient, ids: list[str], *, timeout: float = 120
) -> dict[str, contract.JobRecord]:
    records = await client.wait(ids, timeout=timeout)
    assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}
    for job_id in ids:
        assert await success_events(client, job_id) == 1, job_id
        assert records[job_id].app_failures == 0, records[job_id].attempts
    return records


async def test_sigkill_one_of_three_nodes(stack: Stack, client: JobqClient) -> None:
    ids = await submit_sleepers(client, 6, seconds=6)
    running = await wait_running(client, ids, count=6)
    victim = max(stack.nodes, key=lambda n: sum(1 for r in running if r.current and r.current.node == n))
    killed_at = contract.utcnow()
    stack.signal_node(victim, signal.SIGKILL)
    records = await assert_exactly_once(client, ids)
    moved = [r for r in records.values() if len(r.attempts) > 1]
    assert moved, "the killed node ran nothing"
    for record in moved:
        lost, replacement = record.attempts[0], record.attempts[1]
        assert lost.node == victim and lost.reason == contract.FailureReason.NODE_LOST
        assert replacement.node != victim
        assert record.retries == {"node_lost": 1} and record.disruptions == 1
    recoveries = recovery.after_disruption(list(records.values()), node=victim, killed_at=killed_at)
    assert len(recoveries) == len(moved)
    # Detection window plus a margin for a reconcile pass and a process start on a busy machine.
    assert max(recoveries) < NODE_TIMEOUT_S + 5, recoveries


async def test_sigkill_two_of_three_nodes_the_survivor_finishes(stack: Stack, client: JobqClient) -> None:
    ids = await submit_sleepers(client, 6, seconds=4)
    await wait_running(client, ids, count=6)
    for name in ("node-1", "node-2"):
        stack.signal_node(name, signal.SIGKILL)
    records = await assert_exactly_once(client, ids, timeout=180)
    assert {r.attempts[-1].node for r in records.values()} == {"node-3"}


async def test_partitioned_node_comes_back_its_stale_attempts_are_fenced(
    stack: Stack, client: JobqClient
) -> None:
    ids = await submit_sleepers(client, 6, seconds=5)
    running = await wait_running(client, ids, count=6)
    victim = max(stack.nodes, key=lambda n: sum(1 for r in running if r.current and r.current.node == n))
    status = await node_status(stack, victim)
    pods = [p for p in status.pods if p.pid]
    assert pods
    # SIGSTOP the node agent and its pods: alive but silent, like a machine behind a partition.
    stack.signal_node(victim, signal.SIGSTOP)
    for pod in pods:
        os.killpg(pod.pid or 0, signal.SIGSTOP)
    try:
        moved_ids = [p.job_id for p in pods]
        for _ in range(300):
            records = {i: await client.get(i) for i in moved_ids}
            if all(r is not None and r.phase == contract.JobPhase.SUCCEEDED for r in records.values()):
                break
            await asyncio.sleep(0.2)
    finally:
        for pod in pods:
            os.killpg(pod.pid or 0, signal.SIGCONT)
        stack.signal_node(victim, signal.SIGCONT)
    records = await assert_exactly_once(client, ids)
    # Once the node is back, the dispatcher deletes the stale pods and records what it ignored.
    for _ in range(100):
        leftovers = [p for p in (await node_status(stack, victim)).pods if p.job_id in moved_ids]
        if not leftovers:
            break
        await asyncio.sleep(0.2)
    assert not leftovers
    for job_id in moved_ids:
        record = records[job_id]
        assert record.result_attempt == len(record.attempts) > 1
        assert record.attempts[0].reason == contract.FailureReason.NODE_LOST
        assert any(e.type == contract.EventType.STALE for e in await client.events(job_id, settled=True)), (
            job_id
        )


async def test_dispatcher_kill_9_then_restart_adopts_running_pods(stack: Stack, client: JobqClient) -> None:
    ids = await submit_sleepers(client, 6, seconds=8)
    await wait_running(client, ids, count=6)
    stack.signal_dispatcher(0, signal.SIGKILL)
    await stack.dispatchers[0].wait()
    more = await submit_sleepers(client, 3, seconds=1)  # accepted by JetStream while no dispatcher runs
    await stack.start_dispatcher(0)
    records = await assert_exactly_once(client, ids + more)
    assert all(len(records[i].attempts) == 1 for i in ids), "running pods were adopted, not restarted"


async def test_two_dispatchers_standby_takes_over(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, dispatchers=2)
    try:
        async with submitter_client(stack) as client:
            ids = await submit_sleepers(client, 6, seconds=4)
            await wait_running(client, ids, count=3)
            kv = await client.js.key_value(contract.BUCKET_LEADER)
            holder = ((await kv.get(LEASE_KEY)).value or b"").decode()
            leader = next(i for i, p in stack.dispatchers.items() if holder.endswith(f"-{p.pid}"))
            stack.signal_dispatcher(leader, signal.SIGKILL)
            records = await assert_exactly_once(client, ids)
            new_holder = ((await kv.get(LEASE_KEY)).value or b"").decode()
            assert new_holder != holder
            assert all(len(r.attempts) == 1 for r in records.values()), {
                i: [(a.node, a.reason, a.message) for a in r.attempts] for i, r in records.items()
                if len(r.attempts) > 1}
    finally:
        await stack.stop()


async def test_graceful_stop_with_jobs_in_flight_then_restart_finishes_everything(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    async with submitter_client(stack) as client:
        ids = await submit_sleepers(client, 8, seconds=3)
        await wait_running(client, ids, count=2)
    await stack.stop()  # what Ctrl-C on `jobq up` does
    stack = await start_stack(tmp_path)  # same data dir: same JetStream store
    try:
        async with submitter_client(stack) as client:
            records = await client.wait(ids, timeout=120)
            assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}
            for job_id in ids:
                assert await success_events(client, job_id) == 1
    finally:
        await stack.stop()
