"""Jobs that cannot run never stall others (issue 11): a job no node can fit stays queued with a
reason, holds no lower-priority job back, and gives up after its pending timeout."""

from __future__ import annotations

import asyncio
import time

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient


async def wait_waiting(client: JobqClient, job_id: str, *, timeout: float = 30) -> contract.JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = await client.get(job_id)
        if record is not None and record.waiting_reason:
            return record
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.2)


async def test_unfittable_high_priority_job_does_not_stall_the_queue(
    stack: Stack, client: JobqClient
) -> None:
    big = await client.submit(task="demo.sleep", args={"seconds": 1}, priority=100, resources={"cpu": 200})
    waiting = await wait_waiting(client, big.id)
    assert waiting.phase == contract.JobPhase.QUEUED and waiting.attempts == ()
    assert waiting.waiting_reason == "unschedulable: needs 200 CPU; largest Ready node offers 2", waiting
    small = [await client.submit(task="demo.sleep", args={"seconds": 1}, priority=-5) for _ in range(4)]
    records = await client.wait([h.id for h in small], timeout=90)
    assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}
    # It is still there, still saying why, and was never counted as running.
    still = await client.get(big.id)
    assert still is not None and still.phase == contract.JobPhase.QUEUED and still.attempts == ()
    events = await client.events(big.id)
    assert [e.type for e in events].count(contract.EventType.WAITING) == 1, events
    cancelled = await client.cancel(big.id)
    assert cancelled.cancel_requested
    final = await client.wait([big.id], timeout=30)
    assert final[big.id].phase == contract.JobPhase.CANCELLED


async def test_pending_timeout_dead_letters_a_job_that_waited_too_long(
    stack: Stack, client: JobqClient
) -> None:
    handle = await client.submit(
        task="demo.sleep", args={"seconds": 1}, resources={"memory": "64Gi"}, pending_timeout_s=2
    )
    records = await client.wait([handle.id], timeout=30)
    record = records[handle.id]
    assert record.phase == contract.JobPhase.DEAD and record.reason == contract.FailureReason.UNSCHEDULABLE
    assert "needs 64Gi memory" in record.message and "pending_timeout_s=2" in record.message
    letters = [letter for _, letter in await client.dead_letters()]
    assert any(d.job_id == handle.id and d.reason == contract.FailureReason.UNSCHEDULABLE for d in letters)


async def test_a_job_waiting_for_room_runs_when_room_frees(tmp_path: object) -> None:
    from pathlib import Path

    from tests.conftest import running_stack, submitter_client

    async with (
        running_stack(Path(str(tmp_path)), nodes=1, node_cpu=1.0) as stack,
        submitter_client(stack) as client,
    ):
        first = await client.submit(task="demo.sleep", args={"seconds": 4}, resources={"cpu": 1})
        second = await client.submit(task="demo.sleep", args={"seconds": 1}, resources={"cpu": 1})
        # While the first runs, the second waits in the queue (a backlog's normal state: no
        # attempt, not counted as running, nothing written) until the room frees.
        deadline = time.monotonic() + 30
        while True:
            one, two = await client.get(first.id), await client.get(second.id)
            if (one is not None and two is not None and one.phase == contract.JobPhase.RUNNING
                    and one.current and one.current.state == "running"):
                break
            assert time.monotonic() < deadline, (one, two)
            await asyncio.sleep(0.1)
        assert two is not None and two.phase == contract.JobPhase.QUEUED and two.attempts == (), two
        records = await client.wait([first.id, second.id], timeout=60)
        assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}
        assert len(records[second.id].attempts) == 1
        assert records[second.id].waiting_reason == ""
