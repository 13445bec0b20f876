"""Retention against real servers (docs/design/retention.md).

- The sweeper on a real nats-server: a due job's record, results and artifacts are gone as NATS
  itself shows them (stream subjects, KV, object store), a job kept longer and a running job stay;
  a deletion cut off at any step (a kill, a lost lease) is finished by the next leader, and a
  reader sees the job gone from the first step on; a deposed or superseded leader deletes nothing.
- The embedded stack: a job with a short retention expires (API 404, gone from NATS), a kept one
  stays, a running one is never expired; a resubmission under the expired job's idempotency key
  runs again; a leader killed with SIGKILL mid-deletion is healed by the dispatcher that leads next.

Short retentions (1-3 s) stand in for the default of 7 days so that the tests see jobs expire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from broker import contract, store
from broker.dispatcher.expiry import Sweeper
from broker.dispatcher.index import JobIndex
from broker.dispatcher.lease import LeaseLost
from broker.dispatcher.retention import RetentionPolicy
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack
from submitter.client import JobNotFound, JobqClient
from tests.conftest import running_stack, submitter_client
from workers import results

DAY = 86400.0
GONE = {"record": None, "results": set(), "progress": set(), "artifacts": []}
"""What NATS keeps of an expired job: nothing."""
ARTIFACT = "out.txt"


# --- what NATS holds, read from its streams (not from the dispatcher) -------------------------


async def subjects(js: JetStreamContext, stream: str, pattern: str) -> set[str]:
    info = await js.stream_info(stream, subjects_filter=pattern)
    return set(info.state.subjects or {})


async def stored(js: JetStreamContext, job_id: str) -> dict[str, object]:
    """What NATS keeps of ``job_id``: its record (raw KV), its result subjects, its artifacts."""
    try:
        entry = await (await js.key_value(contract.BUCKET_JOBS)).get(job_id)
        record: contract.JobRecord | None = contract.JobRecord.model_validate_json(entry.value or b"")
    except nats.js.errors.KeyNotFoundError:
        record = None
    found_results = await subjects(
        js, f"KV_{contract.BUCKET_RESULTS}", f"$KV.{contract.BUCKET_RESULTS}.{job_id}.>"
    )
    found_progress = await subjects(
        js, f"KV_{contract.BUCKET_PROGRESS}", f"$KV.{contract.BUCKET_PROGRESS}.{job_id}.>"
    )
    artifacts = (
        await (await js.object_store(contract.OBJECT_STORE_ARTIFACTS)).list(ignore_deletes=True)
        if await subjects(js, f"OBJ_{contract.OBJECT_STORE_ARTIFACTS}", "$O.>")
        else []
    )
    return {
        "record": record,
        "results": found_results,
        "progress": found_progress,
        "artifacts": sorted(a.name for a in artifacts if a.name.startswith(f"{job_id}/")),
    }


async def artifact_chunks(js: JetStreamContext) -> set[str]:
    return await subjects(
        js, f"OBJ_{contract.OBJECT_STORE_ARTIFACTS}", f"$O.{contract.OBJECT_STORE_ARTIFACTS}.C.>"
    )


# --- the sweeper on a real nats-server ---------------------------------------------------------


class Fence:
    """The leader's lease as the sweeper sees it: epoch ``epoch``; ``fail_at`` cuts the leader off
    at that check (0 = the first), as a kill or a lost lease would."""

    def __init__(self, epoch: int, *, fail_at: int | None = None) -> None:
        self.epoch = epoch
        self.fail_at = fail_at
        self.checks = 0

    def check(self, seen_epoch: int = 0) -> int:
        n, self.checks = self.checks, self.checks + 1
        if self.fail_at is not None and n >= self.fail_at:
            raise LeaseLost("cut off")
        if seen_epoch > self.epoch:
            raise LeaseLost(f"superseded: epoch {seen_epoch}")
        return self.epoch


async def finished_job(
    st: store.Store,
    job_id: str,
    *,
    ended_ago_s: float,
    retention_s: float | None = None,
    phase: contract.JobPhase = contract.JobPhase.SUCCEEDED,
    epoch: int = 1,
) -> None:
    """A job as a dispatcher leaves it: two attempts, each with a stored result and an artifact
    (attempt 1's result stands for one that was rejected), attempt 2 accepted."""
    now = contract.utcnow()
    ended = now - dt.timedelta(seconds=ended_ago_s)
    spec = contract.JobSpec(id=job_id, task="demo.sleep", retention_s=retention_s)
    attempts = []
    for number in (1, 2):
        pod = contract.pod_name(job_id, number)
        writer = contract.Writer(pod=pod, pod_uid=f"uid-{number}")
        data = f"{job_id} attempt {number}".encode()
        await results.ArtifactStore(st.js).put(
            contract.artifact_key(job_id, number, ARTIFACT), data, writer=writer
        )
        await results.write_result(
            st.js,
            contract.TaskResult(
                job_id=job_id,
                attempt=number,
                writer=writer,
                started_at=ended,
                finished_at=ended,
                artifacts={ARTIFACT: contract.artifact_digest(data)},
            ),
        )
        progress = contract.AttemptProgress(
            job_id=job_id, attempt=number, fraction=1.0, message="done", at=ended
        )
        await (await st.js.key_value(contract.BUCKET_PROGRESS)).put(
            contract.progress_key(job_id, number), progress.model_dump_json().encode()
        )
        attempts.append(
            contract.Attempt(
                number=number,
                pod=pod,
                state=contract.AttemptState.SUCCEEDED,
                created_at=ended,
                finished_at=ended,
                writer=writer,
            )
        )
    terminal = phase.is_terminal
    record = contract.JobRecord(
        spec=spec,
        phase=phase,
        attempts=tuple(attempts),
        submitted_at=ended,
        updated_at=ended,
        finished_at=ended if terminal else None,
        result_attempt=2 if phase == contract.JobPhase.SUCCEEDED else None,
        epoch=epoch,
    )
    assert await st.create(record) is not None


@pytest.fixture
async def st(nc: NATS) -> store.Store:
    return await store.Store.open(nc)


@pytest.fixture
async def index(st: store.Store) -> AsyncIterator[JobIndex]:
    """The index as every dispatcher keeps it: fed by the KV watch (deletions included)."""
    idx, ready = JobIndex(), asyncio.Event()
    watch = asyncio.create_task(st.watch_jobs(idx.put, ready, idx.remove))
    await ready.wait()
    yield idx
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)


def sweeper(st: store.Store, index: JobIndex, fence: Fence, *, window_s: float = 7 * DAY) -> Sweeper:
    return Sweeper(
        st, index=index, policy=RetentionPolicy(), fence=fence.check, idempotency_window_s=window_s
    )


async def until(predicate: Callable[[], object], *, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_due_job_is_deleted_and_the_others_are_kept(
    st: store.Store, index: JobIndex, nats_server: NatsServer
) -> None:
    await finished_job(st, "due", ended_ago_s=10, retention_s=5)
    await finished_job(st, "kept", ended_ago_s=10)  # the default: 7 days
    await finished_job(st, "dead-due", ended_ago_s=10, retention_s=5, phase=contract.JobPhase.DEAD)
    await finished_job(st, "running", ended_ago_s=10, retention_s=1, phase=contract.JobPhase.RUNNING)
    await until(lambda: len(index) == 4, what="index loaded")
    before = {job: await stored(st.js, job) for job in ("due", "kept", "dead-due", "running")}
    assert all(
        s["record"] and len(s["results"]) == 2 and len(s["progress"]) == 2 and len(s["artifacts"]) == 2  # type: ignore[arg-type]
        for s in before.values()
    ), before
    chunks = await artifact_chunks(st.js)
    assert len(chunks) == 8

    async with JobqClient(nats_server.url) as client:
        read_before = await client.get("due")  # a reader that read the job while it was kept
        assert read_before is not None and (await client.result_of(read_before)).attempt == 2

    keys = await st.js.stream_info(f"KV_{contract.BUCKET_IDEMPOTENCY}")
    assert keys.config.max_age == 7 * DAY  # Store.open's default window
    sweep, stop = sweeper(st, index, Fence(3), window_s=DAY), asyncio.Event()
    task = asyncio.create_task(sweep.run(stop))
    try:
        await until(lambda: index.get("due") is None and index.get("dead-due") is None, what="expired")
    finally:
        stop.set()
        await task
    for job in ("due", "dead-due"):
        assert await stored(st.js, job) == GONE
    for job in ("kept", "running"):
        assert await stored(st.js, job) == before[job]
    keys = await st.js.stream_info(f"KV_{contract.BUCKET_IDEMPOTENCY}")
    assert keys.config.max_age == DAY  # the leader's JOBQ_IDEMPOTENCY_WINDOW_S, set on the existing bucket
    assert len(await artifact_chunks(st.js)) == 4  # the expired jobs' chunks are gone, not only named
    async with JobqClient(nats_server.url) as client:
        assert await client.get("due") is None and await client.get("kept") is not None
        assert sorted(r.spec.id for r in await client.list()) == ["kept", "running"]
        with pytest.raises(JobNotFound, match="expired"):  # not "succeeded" without a result
            await client.result_of(read_before)
    # The record's purge marker expires (nats-server 2.11+): `jobq list` never grows with expired jobs.
    marker = await st.js.get_last_msg(f"KV_{contract.BUCKET_JOBS}", f"$KV.{contract.BUCKET_JOBS}.due")
    assert marker.headers and marker.headers.get("Nats-TTL") == "86400"


async def test_a_deletion_cut_off_at_any_step_is_finished_by_the_next_leader(
    st: store.Store, index: JobIndex, nats_server: NatsServer
) -> None:
    steps = 0
    async with JobqClient(nats_server.url) as client:
        while True:
            job = f"cut-{steps}"
            await finished_job(st, job, ended_ago_s=10, retention_s=5)
            await until(lambda j=job: index.get(j) is not None)  # type: ignore[misc]
            try:
                done = await sweeper(st, index, Fence(3, fail_at=steps)).expire(job)
            except LeaseLost:
                done = False
            left = await stored(st.js, job)
            record = left["record"]
            if isinstance(record, contract.JobRecord):
                # Mid-way, a reader never sees a finished job without its outputs: once anything is
                # deleted the record is marked, and every reader takes the job for gone.
                outputs_whole = left["results"] and len(left["artifacts"]) == 2  # type: ignore[arg-type]
                assert record.expired or outputs_whole, left
                if record.expired:
                    assert await client.get(job) is None
            if done:
                break
            # The next leader (a new sweeper, index rebuilt from the watch) finishes the job.
            assert await sweeper(st, index, Fence(4)).expire(job)
            assert await stored(st.js, job) == GONE
            steps += 1
    assert steps >= 5  # cut before the mark, after it, between artifacts, results and the record


async def test_a_deposed_or_superseded_leader_deletes_nothing(st: store.Store, index: JobIndex) -> None:
    await finished_job(st, "old", ended_ago_s=10, retention_s=5, epoch=9)
    await until(lambda: index.get("old") is not None)
    before = await stored(st.js, "old")
    deposed = Fence(9, fail_at=0)  # its lease ran out
    with pytest.raises(LeaseLost):
        await sweeper(st, index, deposed).expire("old")
    superseded = Fence(5)  # a leader of epoch 9 wrote the record after it
    with pytest.raises(LeaseLost, match="superseded"):
        await sweeper(st, index, superseded).expire("old")
    after = await stored(st.js, "old")
    assert after == before and isinstance(after["record"], contract.JobRecord) and not after["record"].expired


# --- the embedded stack -----------------------------------------------------------------------


async def api_status(stack: Stack, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession(headers=stack.http_headers) as http,
        http.get(stack.http_url.rstrip("/") + path) as response,
    ):
        return response.status, await response.json()


async def expired_counted(stack: Stack) -> float:
    """``jobq_jobs_expired_total`` summed over every dispatcher's /metrics."""
    total = 0.0
    async with aiohttp.ClientSession(headers=stack.http_headers) as http:
        for port in stack.http_ports.values():
            url = f"{stack.http_url.split('://')[0]}://127.0.0.1:{port}/metrics"
            async with http.get(url, ssl=False) as response:
                for line in (await response.text()).splitlines():
                    if line.startswith("jobq_jobs_expired_total{"):
                        total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(180)
async def test_on_the_stack_a_short_retention_expires_and_its_key_is_free_again(tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger.jsonl")
    async with running_stack(tmp_path, nodes=2) as stack, submitter_client(stack) as client:
        js = client.js
        await client.submit(
            id="short",
            task="demo.witness",
            args={"ledger": ledger, "seconds": 0.2},
            retention_s=3,
            idempotency_key="key-short",
        )
        await client.submit(
            id="kept",
            task="demo.witness",
            args={"ledger": ledger, "seconds": 0.2},
            idempotency_key="key-kept",
        )
        await client.submit(id="busy", task="demo.sleep", args={"seconds": 25}, retention_s=1)
        done = await client.wait(["short", "kept"], timeout=60)
        assert {r.phase for r in done.values()} == {contract.JobPhase.SUCCEEDED}
        assert (await stored(js, "short"))["artifacts"] == [f"short/1/{results_artifact()}"]

        deadline = time.monotonic() + 30
        while (await stored(js, "short"))["record"] is not None:
            assert time.monotonic() < deadline, "short was not expired"
            await asyncio.sleep(0.2)
        assert await stored(js, "short") == GONE
        status, body = await api_status(stack, "/api/jobs/short")
        assert status == 404, body
        status, page = await api_status(stack, "/api/jobs?limit=500")
        assert status == 200 and {j["id"] for j in page["jobs"]} == {"kept", "busy"}  # type: ignore[union-attr]
        kept = await stored(js, "kept")
        assert kept["record"] is not None and kept["results"] and kept["artifacts"]
        busy = (await stored(js, "busy"))["record"]
        assert isinstance(busy, contract.JobRecord) and busy.phase == contract.JobPhase.RUNNING
        assert (await api_status(stack, "/api/jobs/kept"))[0] == 200
        # The metric counts what NATS shows deleted: one job (summed over every replica's scrape).
        assert await expired_counted(stack) == 1

        # The same idempotency keys again, published as any NATS client may (its own message id:
        # JetStream's 15-minute de-duplication is not what is tested here).
        for job_id, key in (("short-again", "key-short"), ("kept-again", "key-kept")):
            spec = contract.JobSpec(
                id=job_id, task="demo.witness", args={"ledger": ledger, "seconds": 0.2}, idempotency_key=key
            )
            await js.publish(
                contract.submit_subject("default"),
                spec.model_dump_json().encode(),
                headers={contract.HEADER_MSG_ID: job_id},
            )
        again = await client.wait(["short-again"], timeout=60)
        assert again["short-again"].phase == contract.JobPhase.SUCCEEDED  # ran: the key's job was gone
        deadline = time.monotonic() + 30
        while not (events := await client.events("kept-again")):
            assert time.monotonic() < deadline, "kept-again was not judged"
            await asyncio.sleep(0.2)
        assert [e.type for e in events] == [contract.EventType.DUPLICATE]  # the key's job is kept
        assert "idempotency key already used by job kept" in events[0].message
        assert await client.get("kept-again") is None


def results_artifact() -> str:
    from workers.tasks.demo_tasks import WITNESS_ARTIFACT

    return WITNESS_ARTIFACT


@pytest.mark.timeout(180)
async def test_a_leader_killed_mid_deletion_is_healed_by_the_next(tmp_path: Path) -> None:
    async with running_stack(tmp_path, nodes=1) as stack, submitter_client(stack) as client:
        nc = stack.nc
        assert nc is not None
        st = await store.Store.open(nc)
        stack.signal_dispatcher(0, signal.SIGKILL)
        # What a leader leaves when it is killed right after marking the job (its outputs and the
        # record still stored): planted while no dispatcher runs.
        await finished_job(st, "halfway", ended_ago_s=60, retention_s=30)
        got = await st.get("halfway")
        assert got is not None
        marked = got[0].model_copy(update={"expired_at": contract.utcnow()})
        await st.update(marked, revision=got[1])
        assert await client.get("halfway") is None  # readers already take it for gone
        assert (await stored(client.js, "halfway"))["results"]
        await stack.start_dispatcher(0)
        deadline = time.monotonic() + 60
        while (await stored(client.js, "halfway"))["record"] is not None:
            assert time.monotonic() < deadline, "the next leader did not finish the deletion"
            await asyncio.sleep(0.2)
        assert await stored(client.js, "halfway") == GONE
        assert json.loads(json.dumps(await api_status(stack, "/api/jobs/halfway")))[0] == 404
