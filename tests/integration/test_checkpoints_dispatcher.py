"""The dispatcher's side of checkpoints on a real nats-server (docs/design/checkpoints-dispatcher.md).

Pointers and objects are planted as a pod writes them (``contract.CheckpointPointer`` by
compare-and-set in KV ``jobq_checkpoints``, objects stamped with their ``Writer`` through
``workers.results.ArtifactStore``); what the dispatcher did is read back from NATS itself.

- The leader's pointer watch deletes the objects a change superseded, never the one a pointer
  references, even when the pointer moves back or holds garbage, and counts the new checkpoints.
- Retention deletes a job's pointer and its checkpoint objects with the rest of the job.
- The embedded stack: a task whose node is SIGKILLed while a planted pointer says it checkpointed
  at T gets ``checkpoints`` and ``work_lost_s`` = its last heartbeat (as this test received it) - T;
  a succeeded attempt gets its checkpoints and no work lost; /metrics agree.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import AsyncIterator

import aiohttp
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from broker import checkpoint_store, contract, store
from broker.dispatcher.checkpoints import Checkpoints
from broker.dispatcher.index import JobIndex
from broker.dispatcher.reconcile import Heartbeats
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.http.helpers import scrape, value
from tests.integration.helpers import wait_for, wait_running
from tests.integration.test_retention import GONE, Fence, index, st, stored, sweeper  # noqa: F401  (fixtures)
from workers import results

pytestmark = pytest.mark.timeout(180)


def key(job_id: str, attempt: int, seq: int) -> str:
    return contract.checkpoint_object_key(job_id, attempt, seq)


def writer(job_id: str, attempt: int) -> contract.Writer:
    return contract.Writer(pod=contract.pod_name(job_id, attempt), pod_uid=f"uid-{attempt}", node="node-1")


async def put_object(js: JetStreamContext, job_id: str, attempt: int, seq: int) -> str:
    name = key(job_id, attempt, seq)
    data = f"state {attempt}.{seq}".encode()
    await results.ArtifactStore(js).put(name, data, writer=writer(job_id, attempt))
    return name


def pointer(job_id: str, owner: int, seq: int, *, made_by: int | None = None, made_seq: int | None = None,
            at: dt.datetime | None = None, **fields: object) -> contract.CheckpointPointer:
    made = made_by or owner
    mseq = made_seq or seq
    data = f"state {made}.{mseq}".encode()
    return contract.CheckpointPointer(
        job_id=job_id, owner=owner, seq=seq, step=10 * mseq, object=key(job_id, made, mseq),
        digest=contract.artifact_digest(data), size=len(data), writer=writer(job_id, made), made_by=made,
        at=at or contract.utcnow(), **fields)


class PointerWriter:
    """Moves one job's pointer by compare-and-set, as the pod's checkpoint context does."""

    def __init__(self, kv: KeyValue, job_id: str) -> None:
        self.kv, self.job_id, self.revision = kv, job_id, 0

    async def set(self, value: contract.CheckpointPointer | bytes) -> None:
        data = value if isinstance(value, bytes) else value.model_dump_json().encode()
        if self.revision == 0:
            self.revision = await self.kv.create(contract.checkpoint_pointer_key(self.job_id), data)
        else:
            self.revision = await self.kv.update(contract.checkpoint_pointer_key(self.job_id), data,
                                                 last=self.revision)


async def exists(js: JetStreamContext, name: str) -> bool:
    try:
        await (await js.object_store(contract.OBJECT_STORE_ARTIFACTS)).get_info(name)
    except nats.js.errors.ObjectNotFoundError:
        return False
    return True


async def objects(js: JetStreamContext, job_id: str, attempts: int, seqs: int) -> set[str]:
    """Which of ``job_id``'s checkpoint objects 1..seqs of attempts 1..attempts NATS holds."""
    return {key(job_id, a, s) for a in range(1, attempts + 1) for s in range(1, seqs + 1)
            if await exists(js, key(job_id, a, s))}


class Counted:
    def __init__(self) -> None:
        self.total = 0

    def checkpointed(self, record: contract.JobRecord, count: int) -> None:
        self.total += count


class NoBackend:
    async def list_nodes(self) -> list[object]:
        return []


@pytest.fixture
async def watching(st: store.Store) -> AsyncIterator[tuple[Checkpoints, Counted, JobIndex]]:  # noqa: F811
    idx, counted = JobIndex(), Counted()
    keeper = Checkpoints(st=st, backend=NoBackend(), heartbeats=Heartbeats(), index=idx,  # type: ignore[arg-type]
                         counter=counted)
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.watch(stop))
    await asyncio.wait_for(keeper.live.wait(), 10)
    yield keeper, counted, idx
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_watch_deletes_superseded_objects_never_the_referenced_one(
    st: store.Store, watching: tuple[Checkpoints, Counted, JobIndex]  # noqa: F811
) -> None:
    _keeper, counted, idx = watching
    job_id = "gc-job"
    now = contract.utcnow()
    record = contract.JobRecord(spec=contract.JobSpec(id=job_id, task="demo.sleep"), submitted_at=now,
                                updated_at=now)
    idx.put(record, 1)
    js = st.js
    kv = await js.key_value(contract.BUCKET_CHECKPOINTS)
    ptr = PointerWriter(kv, job_id)
    for seq in (1, 2, 3):
        await put_object(js, job_id, 1, seq)
    await ptr.set(pointer(job_id, 1, 1))
    await ptr.set(pointer(job_id, 1, 3))
    await wait_for(lambda: counted.total == 3, timeout=10, what="3 checkpoints counted")
    await wait_until(lambda: objects(js, job_id, 2, 4), {key(job_id, 1, 3)})

    # Attacks a pod of the job could make: the pointer moves back, then holds garbage, then names
    # another job. Nothing it references (or referenced) goes, nothing is counted, nothing crashes.
    await ptr.set(pointer(job_id, 1, 2))
    await ptr.set(b"not a pointer")
    assert await checkpoint_store.read_pointer(st, job_id) is None
    assert await checkpoint_store.delete_objects(st, job_id, [key(job_id, 1, 3)]) == 0
    await ptr.set(pointer("other-job", 9, 9))
    # The leader asked outright to delete what the pointer references refuses.
    await ptr.set(pointer(job_id, 1, 3))
    assert await checkpoint_store.delete_objects(st, job_id, [key(job_id, 1, 3)]) == 0
    assert await objects(js, job_id, 2, 4) == {key(job_id, 1, 3)}

    # Attempt 2 restores 1/3 (the claim keeps it), then checkpoints twice: 1/3, then 2/1 go.
    await ptr.set(pointer(job_id, 2, 0, made_by=1, made_seq=3, resumed_step=30, resumed_from=1,
                          resumed_at=contract.utcnow()))
    await asyncio.sleep(0.5)  # time for the watch to act on it, which must delete nothing
    assert await objects(js, job_id, 2, 4) == {key(job_id, 1, 3)}
    await put_object(js, job_id, 2, 1)
    await ptr.set(pointer(job_id, 2, 1, resumed_from=1))
    await wait_until(lambda: objects(js, job_id, 2, 4), {key(job_id, 2, 1)})
    await put_object(js, job_id, 2, 2)
    await ptr.set(pointer(job_id, 2, 2, resumed_from=1))
    await wait_until(lambda: objects(js, job_id, 2, 4), {key(job_id, 2, 2)})
    # 3, then 2/1 and 2/2; the forged move back to 1/2 and forward to 1/3 again counted one more.
    assert counted.total == 3 + 1 + 1 + 1


async def wait_until(read, want: object, *, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got = await read()
    while got != want:
        assert loop.time() < deadline, f"{got} != {want}"
        await asyncio.sleep(0.1)
        got = await read()


async def test_retention_purges_the_pointer_and_every_checkpoint_object(
    st: store.Store, index: JobIndex  # noqa: F811
) -> None:
    job_id, kept_id = "expiring", "kept"
    ended = contract.utcnow() - dt.timedelta(seconds=30)
    for jid, retention in ((job_id, 1.0), (kept_id, None)):
        first = contract.Attempt(
            number=1, pod=contract.pod_name(jid, 1), state=contract.AttemptState.FAILED,
            reason=contract.FailureReason.NODE_LOST, created_at=ended, finished_at=ended,
            checkpoints=contract.AttemptCheckpoints(written=3, step=30, at=ended))
        second = contract.Attempt(number=2, pod=contract.pod_name(jid, 2),
                                  state=contract.AttemptState.SUCCEEDED, created_at=ended, finished_at=ended)
        record = contract.JobRecord(
            spec=contract.JobSpec(id=jid, task="demo.sleep", retention_s=retention),
            phase=contract.JobPhase.SUCCEEDED, attempts=(first, second), submitted_at=ended, updated_at=ended,
            finished_at=ended, epoch=1)
        assert await st.create(record) is not None
        # Left over as a failover could leave them: attempt 1's 2 and 3 and the orphan 4 (put
        # before a compare-and-set it lost), attempt 2's 1 and 2 and the orphan 3.
        for a, s in ((1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3)):
            await put_object(st.js, jid, a, s)
        await PointerWriter(await st.js.key_value(contract.BUCKET_CHECKPOINTS), jid).set(
            pointer(jid, 2, 2, resumed_from=1))
    await wait_for(lambda: index.get(job_id) is not None and index.get(kept_id) is not None, what="indexed")

    assert await sweeper(st, index, Fence(1)).expire(job_id)

    assert await stored(st.js, job_id) == GONE
    assert await checkpoint_store.read_pointer(st, job_id) is None
    info = await st.js.stream_info(f"KV_{contract.BUCKET_CHECKPOINTS}", subjects_filter=">")
    assert set(info.state.subjects or {}) == {f"$KV.{contract.BUCKET_CHECKPOINTS}.{kept_id}"}, "a marker left"
    assert len((await stored(st.js, kept_id))["artifacts"]) == 6  # type: ignore[arg-type]
    assert await checkpoint_store.read_pointer(st, kept_id) is not None


# --- the embedded stack ------------------------------------------------------------------------------


async def test_node_lost_attempt_is_stamped_with_its_checkpoints_and_work_lost(
    stack: Stack, client: JobqClient
) -> None:
    assert stack.nc is not None
    js = stack.nc.jetstream()
    kv = await js.key_value(contract.BUCKET_CHECKPOINTS)
    beats: dict[tuple[str, int], dt.datetime] = {}

    async def on_beat(msg: Msg) -> None:  # what this test itself received, not the dispatcher
        beat = contract.AttemptHeartbeat.model_validate_json(msg.data)
        beats[(beat.job_id, beat.attempt)] = contract.utcnow()

    sub = await stack.nc.subscribe(contract.HEARTBEAT_WILDCARD, cb=on_beat)

    # A job that succeeds after checkpointing once: its checkpoints, no work lost.
    short = await client.submit(task="demo.sleep", args={"seconds": 3})
    await wait_running(client, [short.id], count=1)
    await put_object(js, short.id, 1, 1)
    await PointerWriter(kv, short.id).set(pointer(short.id, 1, 1))
    done = (await client.wait([short.id], timeout=60))[short.id]
    assert done.phase == contract.JobPhase.SUCCEEDED
    ok = done.attempts[0]
    assert ok.checkpoints is not None and (ok.checkpoints.written, ok.checkpoints.step) == (1, 10)
    assert ok.work_lost_s is None

    # A long job checkpoints 3 times (the newest at T), beats on, then its node is SIGKILLed.
    long = await client.submit(task="demo.sleep", args={"seconds": 120})
    [running] = await wait_running(client, [long.id], count=1)
    assert running.current is not None and running.current.node
    node = running.current.node
    ptr = PointerWriter(kv, long.id)
    for seq in (1, 2, 3):
        await put_object(js, long.id, 1, seq)
        newest = pointer(long.id, 1, seq)
        await ptr.set(newest)
    t = newest.at
    assert t is not None
    await wait_for(lambda: beats.get((long.id, 1), t) > t + dt.timedelta(seconds=1), timeout=30,
                   what="a heartbeat more than 1 s after the checkpoint")
    stack.signal_node(node, signal.SIGKILL)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not ((record := await client.get(long.id)) and record.attempts[0].state.is_final):
        assert loop.time() < deadline, "attempt 1 did not end"
        await asyncio.sleep(0.2)
    assert record is not None
    lost = record.attempts[0]
    await sub.unsubscribe()
    assert lost.reason == contract.FailureReason.NODE_LOST
    assert lost.checkpoints == contract.AttemptCheckpoints(written=3, step=30, at=t)
    last_beat = beats[(long.id, 1)]
    assert lost.work_lost_s is not None and lost.work_lost_s > 0
    # The dispatcher's receive time of the same last beat: within a scheduling hiccup of ours.
    assert abs(lost.work_lost_s - (last_beat - t).total_seconds()) < 0.5, (lost.work_lost_s, last_beat, t)
    # Attempt end collected 1/1 and 1/2; the pointer's 1/3 stays for the replacement.
    await wait_until(lambda: objects(js, long.id, 1, 3), {key(long.id, 1, 3)})
    await client.cancel(long.id)
    await client.wait([long.id], timeout=60)

    async with aiohttp.ClientSession(headers=stack.http_headers) as http:
        samples, _ = await scrape(http, stack.http_url)
    assert value(samples, "jobq_work_lost_seconds_count", reason="node_lost") == 1
    assert value(samples, "jobq_work_lost_seconds_sum", reason="node_lost") == pytest.approx(lost.work_lost_s)
    assert value(samples, "jobq_checkpoints_total", queue="default") == 1 + 3
