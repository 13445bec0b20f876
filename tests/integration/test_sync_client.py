"""The synchronous SDK (``jobq.SyncJobqClient``) against a real embedded stack: what it reports
is checked against what the async client reads from NATS, from plain threads, many threads at
once, and the thread of a running asyncio loop."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker import contract
from broker.embedded.stack import Stack
from jobq import ClientClosed, JobNotFound, SyncJobqClient, WaitTimeout
from submitter.client import JobqClient


def sync_client(stack: Stack) -> SyncJobqClient:
    """A blocking client of ``stack`` as a submitting service (its submitter user and CA)."""
    return SyncJobqClient(stack.nats_url, name="sync-test", nats_options=stack.nats_options("submitter"))


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("jobq-sync-client")]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_submit_wait_result_list_from_a_plain_thread(stack: Stack, client: JobqClient) -> None:
    def work() -> tuple[str, contract.JobRecord, contract.TaskResult, list[str]]:
        with sync_client(stack) as jobs:
            handle = jobs.submit(task="demo.sleep", args={"seconds": 0.2})
            record = handle.wait(timeout=90)
            result = handle.result(timeout=30)
            listed = [r.spec.id for r in jobs.list()]
            return handle.id, record, result, listed

    job_id, record, result, listed = await asyncio.to_thread(work)
    stored = await client.get(job_id)  # what NATS holds, read by the async client
    assert stored is not None and stored.phase == contract.JobPhase.SUCCEEDED
    assert record.phase == contract.JobPhase.SUCCEEDED and record.result_attempt == stored.result_attempt
    assert result == await client.result_of(stored)
    assert result.output["slept_s"] == 0.2
    assert job_id in listed
    assert not client_threads(), "close() stops the client's thread"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_cancel_and_the_async_clients_errors(stack: Stack, client: JobqClient) -> None:
    def work() -> tuple[str, contract.JobRecord]:
        with sync_client(stack) as jobs:
            with pytest.raises(JobNotFound):
                jobs.cancel("j-" + "0" * 20)
            assert jobs.get("j-" + "0" * 20) is None
            handle = jobs.submit(task="demo.sleep", args={"seconds": 600})
            with pytest.raises(WaitTimeout) as timed_out:
                handle.wait(timeout=0.5)
            assert timed_out.value.pending == (handle.id,)
            cancelled = jobs.cancel(handle.id)
            return handle.id, cancelled

    job_id, cancelled = await asyncio.to_thread(work)
    final = (await client.wait([job_id], timeout=60))[job_id]
    assert final.phase == contract.JobPhase.CANCELLED
    assert cancelled.spec.id == job_id


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_one_client_shared_by_many_threads(stack: Stack, client: JobqClient) -> None:
    threads, per_thread = 8, 2

    def work(jobs: SyncJobqClient, n: int) -> list[tuple[str, float]]:
        done = []
        for k in range(per_thread):
            seconds = round(0.01 * (n * per_thread + k + 1), 2)
            handle = jobs.submit(task="demo.sleep", args={"seconds": seconds})
            done.append((handle.id, handle.result(timeout=120).output["slept_s"]))
        return done

    def run_all() -> list[tuple[str, float]]:
        with sync_client(stack) as jobs, ThreadPoolExecutor(threads) as pool:
            return [pair for part in pool.map(lambda n: work(jobs, n), range(threads)) for pair in part]

    results = await asyncio.to_thread(run_all)
    assert len({job_id for job_id, _ in results}) == threads * per_thread
    records = await client.wait([job_id for job_id, _ in results], timeout=60)
    for job_id, slept in results:
        assert records[job_id].phase == contract.JobPhase.SUCCEEDED
        stored = await client.result_of(records[job_id])
        assert stored.output["slept_s"] == slept == records[job_id].spec.args["seconds"]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_called_from_inside_a_running_event_loop(stack: Stack, client: JobqClient) -> None:
    """A synchronous service that happens to run inside an asyncio loop's thread (this test's):
    the call blocks that thread, but the client's own loop is another thread's."""
    asyncio.get_running_loop()  # this very thread runs a loop
    jobs = sync_client(stack)
    try:
        handle = jobs.submit(task="demo.sleep", args={"seconds": 0.1})
        result = handle.result(timeout=90)
    finally:
        jobs.close()
    with pytest.raises(ClientClosed):
        jobs.get(handle.id)
    stored = await client.get(handle.id)
    assert stored is not None and stored.phase == contract.JobPhase.SUCCEEDED
    assert result == await client.result_of(stored)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_close_ends_a_call_blocked_in_another_thread(stack: Stack) -> None:
    jobs = sync_client(stack)
    handle = jobs.submit(task="demo.sleep", args={"seconds": 600})
    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            handle.wait()
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    await asyncio.sleep(1)
    await asyncio.to_thread(jobs.close)
    await asyncio.to_thread(waiter.join, 30)
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosed)
    assert not client_threads()


def test_a_failed_connect_raises_what_the_async_client_raises_and_leaves_no_thread() -> None:
    with pytest.raises(ConnectionError, match=re.escape("cannot reach NATS at nats://127.0.0.1:1")):
        SyncJobqClient("nats://127.0.0.1:1")
    assert not client_threads()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_logs_follow_events_and_status(stack: Stack, client: JobqClient) -> None:
    ticks = ["sh", "-c", "sleep 1; for i in 1 2 3 4; do echo tick-$i; sleep 0.3; done"]

    def work() -> tuple[str, str, str, contract.JobRecord | None, list[contract.EventType]]:
        with sync_client(stack) as jobs:
            handle = jobs.submit(command=ticks)
            early = jobs.logs(handle.id, follow=True)
            first = next(early)  # a follower dropped after its first chunk: closed on the client's loop
            early.close()
            followed = "".join(jobs.logs(handle.id, follow=True))
            events = [e.type for e in jobs.events(handle.id, settled=True)]
            return handle.id, first, followed, handle.status(), events

    job_id, first, followed, status, events = await asyncio.to_thread(work)
    assert followed.splitlines() == [f"tick-{i}" for i in range(1, 5)]
    assert followed.startswith(first)
    assert status is not None and status.phase == contract.JobPhase.SUCCEEDED
    assert events == [e.type for e in await client.events(job_id, settled=True)]
    assert events[-1] == contract.EventType.SUCCEEDED
