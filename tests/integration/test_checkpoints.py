"""Checkpoints (workers/checkpoints.py, docs/design/checkpoints.md) against a real nats-server.

Outcomes are judged from what NATS holds, read by the test's own connection: the pointer in KV
``jobq_checkpoints`` (every stored value, through a watch), the objects in ``jobq_artifacts`` and
the results in ``jobq_results``; never from what the Checkpointer says about itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
from collections.abc import AsyncIterator, Callable

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import api
from structlog.testing import capture_logs

from broker import contract, natsutil, store_buckets
from broker.embedded.natsserver import NatsServer
from tests.integration.test_artifacts import put_object
from tests.integration.test_runner import runner_env, start
from workers import checkpoints, results, tasks

pytestmark = pytest.mark.timeout(240)

TASK = "tests.integration.checkpoint_task:count"
ck = contract.checkpoint_object_key


def writer(job: str, attempt: int) -> contract.Writer:
    return contract.Writer(pod=contract.pod_name(job, attempt), pod_uid=f"uid-{job}-{attempt}")


def checkpointer(nc: NATS, job: str, attempt: int, *, artifacts: results.ArtifactStore | None = None,
                 deadline_s: float = natsutil.RETRY_BUDGET_S,
                 max_bytes: int = contract.MAX_CHECKPOINT_BYTES) -> checkpoints.Checkpointer:
    js = nc.jetstream()
    return checkpoints.Checkpointer(js, job_id=job, attempt=attempt, writer=writer(job, attempt),
                                    artifacts=artifacts or results.ArtifactStore(js), deadline_s=deadline_s,
                                    max_bytes=max_bytes)


@pytest.fixture
async def buckets(nc: NATS) -> NATS:
    """The buckets pods write, as the broker creates them (Store.open's helpers), on the bare server."""
    js = nc.jetstream()
    await store_buckets.ensure_output_buckets(js, replicas=1, storage=api.StorageType.FILE)
    await store_buckets.ensure_kv(js, api.KeyValueConfig(bucket=contract.BUCKET_RESULTS, history=1))
    return nc


async def stored_pointer(nc: NATS, job: str) -> contract.CheckpointPointer | None:
    kv = await nc.jetstream().key_value(contract.BUCKET_CHECKPOINTS)
    try:
        entry = await kv.get(job)
    except nats.js.errors.KeyNotFoundError:
        return None
    return contract.CheckpointPointer.model_validate_json(entry.value or b"")


async def stored_objects(nc: NATS, job: str) -> dict[str, bytes]:
    """The job's objects in jobq_artifacts, name -> bytes."""
    store = await nc.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)
    try:
        infos = await store.list()
    except nats.js.errors.NotFoundError:
        return {}
    found = {}
    for info in infos:
        if info.name.startswith(f"{job}/"):
            found[info.name] = bytes((await store.get(info.name)).data or b"")
    return found


@contextlib.asynccontextmanager
async def pointer_values(nc: NATS, job: str) -> AsyncIterator[list[contract.CheckpointPointer]]:
    """Every value of the job's pointer the server stores while the block runs (a KV watch)."""
    seen: list[contract.CheckpointPointer] = []
    watcher = await (await nc.jetstream().key_value(contract.BUCKET_CHECKPOINTS)).watch(job)

    async def collect() -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                seen.append(contract.CheckpointPointer.model_validate_json(entry.value))

    collecting = asyncio.create_task(collect())
    try:
        yield seen
    finally:
        await asyncio.sleep(0.5)  # the last values' deliveries
        await watcher.stop()  # type: ignore[no-untyped-call]
        await collecting


def assert_fenced(values: list[contract.CheckpointPointer]) -> None:
    """The invariants of docs/design/checkpoints.md over the pointer's stored values."""
    owners = [v.owner for v in values]
    assert owners == sorted(owners), f"the pointer's owner went down: {owners}"
    for v in values:
        assert v.made_by is None or v.made_by <= v.owner, v
        assert v.seq == 0 or v.made_by == v.owner, v


async def test_round_trip_and_a_later_attempt_restores_the_newest(buckets: NATS) -> None:
    nc, job = buckets, "ck-a"
    status = await (await nc.jetstream().key_value(contract.BUCKET_CHECKPOINTS)).status()
    assert status.history == 1
    first = checkpointer(nc, job, 1)
    assert await first.restore() is None
    await first.checkpoint(b"one", step=1)
    await first.checkpoint(bytes(bytearray(b"two")), step=2)
    assert await first.restore() == tasks.Restored(b"two", 2, 1)  # twice is fine: its own newest
    second = checkpointer(nc, job, 2)
    assert await second.restore() == tasks.Restored(b"two", 2, 1)
    claimed = await stored_pointer(nc, job)
    assert claimed is not None
    assert (claimed.owner, claimed.seq, claimed.step, claimed.made_by) == (2, 0, 2, 1)
    assert claimed.object == ck(job, 1, 2)
    assert (claimed.resumed_step, claimed.resumed_from) == (2, 1)
    assert contract.attempt_checkpoints(claimed, 2) == contract.AttemptCheckpoints(
        written=0, resumed_step=2, resumed_from_attempt=1)
    await second.checkpoint(b"three", step=3)
    assert await stored_objects(nc, job) == {
        ck(job, 1, 1): b"one", ck(job, 1, 2): b"two", ck(job, 2, 1): b"three"}
    assert await checkpointer(nc, job, 4).restore() == tasks.Restored(b"three", 3, 2)  # numbers may skip


async def test_limits_and_arguments(buckets: NATS) -> None:
    nc, job = buckets, "ck-limits"
    assert checkpointer(nc, job, 1).max_bytes == contract.MAX_CHECKPOINT_BYTES
    small = checkpointer(nc, job, 1, max_bytes=8)
    await small.checkpoint(b"x" * 8, step=1)
    with pytest.raises(ValueError, match="at most 8 bytes"):
        await small.checkpoint(b"x" * 9, step=2)
    with pytest.raises(TypeError):
        await small.checkpoint("text", step=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await small.checkpoint(b"x", step=True)
    store = results.ArtifactStore(nc.jetstream())
    await store.put(ck(job, 1, 1), b"x" * 8, writer=writer(job, 1), create_only=True)  # a lost reply's retry
    with pytest.raises(results.ArtifactExists, match="already holds other bytes"):
        await store.put(ck(job, 1, 1), b"y" * 8, writer=writer(job, 1), create_only=True)
    with pytest.raises(results.ArtifactExists, match="already written by"):
        await store.put(ck(job, 1, 1), b"x" * 8, writer=writer(job, 2), create_only=True)
    assert await stored_objects(nc, job) == {ck(job, 1, 1): b"x" * 8}
    assert (p := await stored_pointer(nc, job)) is not None and p.step == 1


class GatedArtifacts(results.ArtifactStore):
    """Holds a put's return (the object is stored) until ``go_on``: the window between an
    attempt's object and its pointer change."""

    def __init__(self, nc: NATS) -> None:
        super().__init__(nc.jetstream())
        self.stored = asyncio.Event()
        self.go_on = asyncio.Event()

    async def put(self, key: str, data: bytes, *, writer: contract.Writer, create_only: bool = False) -> None:
        await super().put(key, data, writer=writer, create_only=create_only)
        self.stored.set()
        await self.go_on.wait()


async def test_a_superseded_attempt_changes_nothing(buckets: NATS) -> None:
    nc, job = buckets, "ck-b"
    async with pointer_values(nc, job) as values:
        first, second = checkpointer(nc, job, 1), checkpointer(nc, job, 2)
        assert await first.restore() is None
        await first.checkpoint(b"1 by 1", step=1)
        assert await second.restore() == tasks.Restored(b"1 by 1", 1, 1)
        with pytest.raises(tasks.Superseded, match="attempt 2"):
            await first.checkpoint(b"2 by 1", step=2)
        with pytest.raises(tasks.Superseded):
            await first.restore()
        assert ck(job, 1, 2) not in await stored_objects(nc, job)  # it stopped before writing
        await second.checkpoint(b"2 by 2", step=2)

        # Attempt 2's object is stored, then attempt 3 takes the pointer before attempt 2's CAS.
        gated = GatedArtifacts(nc)
        slow = checkpointer(nc, job, 2, artifacts=gated)
        await slow.restore()
        writing = asyncio.create_task(slow.checkpoint(b"3 by 2", step=3))
        await gated.stored.wait()
        third = checkpointer(nc, job, 3)
        assert await third.restore() == tasks.Restored(b"2 by 2", 2, 2)
        gated.go_on.set()
        with pytest.raises(tasks.Superseded):
            await writing
        objects = await stored_objects(nc, job)
        assert objects[ck(job, 2, 2)] == b"3 by 2"  # its orphan stays, referenced by nothing
        assert await third.restore() == tasks.Restored(b"2 by 2", 2, 2)
    final = await stored_pointer(nc, job)
    assert final is not None and (final.owner, final.object) == (3, ck(job, 2, 1))
    assert all(v.object != ck(job, 2, 2) for v in values)
    assert [v.owner for v in values][-1] == 3 and len(values) >= 5
    assert_fenced(values)


async def test_racing_attempts_never_move_the_owner_back(buckets: NATS) -> None:
    nc, job = buckets, "ck-race"
    rng = random.Random(17)
    superseded: list[int] = []

    async def attempt(number: int) -> None:
        await asyncio.sleep(number * 0.15)
        own = checkpointer(nc, job, number)
        try:
            got = await own.restore()
            step = got.step if got is not None else 0
            for _ in range(12):
                step += 1
                await own.checkpoint(f"{step} by {number}".encode(), step=step)
                await asyncio.sleep(rng.uniform(0, 0.05))
        except tasks.Superseded:
            superseded.append(number)

    async with pointer_values(nc, job) as values:
        await asyncio.gather(*(attempt(n) for n in range(1, 6)))
    assert_fenced(values)
    assert superseded and 5 not in superseded
    final = await stored_pointer(nc, job)
    assert final is not None and final.owner == 5
    restored = await checkpointer(nc, job, 6).restore()
    assert restored is not None and restored.state == f"{restored.step} by 5".encode()


async def test_a_stopped_pod_that_wakes_after_its_replacement_exits_6(
    nats_server: NatsServer, buckets: NATS
) -> None:
    nc, job = buckets, "ck-stale"

    def env(attempt: int, steps: int) -> dict[str, str]:
        return runner_env(nats_server.url, job_id=job, task=TASK, attempt=attempt,
                          args=json.dumps({"steps": steps, "step_s": 0.05}))

    latest: list[contract.CheckpointPointer | None] = [None]

    async def pointer_is(check: Callable[[contract.CheckpointPointer | None], bool]) -> None:
        async def poll() -> None:
            while not check(latest[0]):
                latest[0] = await stored_pointer(nc, job)
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), 60)

    pods = []
    async with pointer_values(nc, job) as values:
        try:
            first = await start(None, env(1, 100_000))
            pods.append(first)
            await pointer_is(lambda p: p is not None and (p.step or 0) >= 3)
            os.kill(first.process.pid, signal.SIGSTOP)
            second = await start(None, env(2, 10_000))
            pods.append(second)
            await pointer_is(lambda p: p is not None and p.owner == 2 and p.seq >= 3)
            claim = next(v for v in values if v.owner == 2)
            os.kill(first.process.pid, signal.SIGCONT)
            assert await first.wait() == contract.EXIT_SUPERSEDED, first.stderr
            assert "task_superseded" in first.stderr
            second.process.send_signal(signal.SIGTERM)
            assert await second.wait() == 128 + signal.SIGTERM, second.stderr
        finally:
            for pod in pods:
                if pod.process.returncode is None:
                    os.kill(pod.process.pid, signal.SIGCONT)
                    pod.process.kill()
                    await pod.process.wait()
    kv = await nc.jetstream().key_value(contract.BUCKET_RESULTS)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(contract.result_key(job, 1))  # the superseded attempt wrote no result
    assert_fenced(values)
    assert all(v.owner == 2 for v in values[values.index(claim):])
    final = await stored_pointer(nc, job)
    assert final is not None and final.made_by == 2 and final.step is not None
    resumed = final.resumed_step
    assert resumed is not None and resumed >= 3 and final.resumed_from == 1
    objects = await stored_objects(nc, job)
    # Attempt 1's seq is its step: at most one object (put before it was stopped) past the state
    # attempt 2 resumed from, and none at all once it woke.
    assert max(int(k.rsplit("/", 1)[1]) for k in objects if k.startswith(f"{job}/1/")) <= resumed + 1
    state = json.loads(objects[final.object])
    assert state["step"] == final.step and state["by"] == [1] * resumed + [2] * (final.step - resumed)
    restored = await checkpointer(nc, job, 3).restore()
    assert restored is not None and (restored.step, restored.attempt) == (final.step, 2)


@pytest.mark.parametrize("task", [TASK, f"{TASK.partition(':')[0]}:acount"])
async def test_the_second_attempt_of_a_finished_run_resumes_in_the_runner(
    nats_server: NatsServer, buckets: NATS, task: str
) -> None:
    nc, job = buckets, "ck-done-" + task.rpartition(":")[2]
    for attempt, steps in ((1, 3), (2, 5)):
        pod = await start(None, runner_env(nats_server.url, job_id=job, task=task, attempt=attempt,
                                           args=json.dumps({"steps": steps, "step_s": 0})))
        assert await pod.wait() == 0, pod.stderr
    entry = await (await nc.jetstream().key_value(contract.BUCKET_RESULTS)).get(contract.result_key(job, 2))
    output = contract.TaskResult.model_validate_json(entry.value or b"").output
    assert output == {"resumed": [3, 1], "state": {"step": 5, "by": [1, 1, 1, 2, 2]}}


@pytest.mark.parametrize("tamper", ["bytes", "writer", "deleted", "meta"])
async def test_restore_refuses_an_object_another_writer_replaced(buckets: NATS, tamper: str) -> None:
    nc, job = buckets, f"ck-tamper-{tamper}"
    first = checkpointer(nc, job, 1)
    await first.restore()
    await first.checkpoint(b"good", step=5)
    key = ck(job, 1, 1)
    if tamper == "bytes":
        await put_object(nc, key, b"evil", writer(job, 1))  # even with the right stamp
    elif tamper == "writer":
        await put_object(nc, key, b"good", contract.Writer(pod="intruder"))
    elif tamper == "deleted":
        await (await nc.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)).delete(key)
    else:  # its meta message replaced by garbage, as any pod may publish one
        meta = f"$O.{contract.OBJECT_STORE_ARTIFACTS}.M.{base64.urlsafe_b64encode(key.encode()).decode()}"
        await nc.jetstream().publish(meta, b"{garbage", headers={"Nats-Rollup": "sub"})
    second = checkpointer(nc, job, 2)
    with capture_logs() as logs:
        assert await second.restore() is None
    reason = {"bytes": "digest_mismatch", "writer": "writer_mismatch", "deleted": "object_missing",
              "meta": "object_corrupt"}[tamper]
    assert [(e["log_level"], e["reason"]) for e in logs if e["event"] == "checkpoint_rejected"] == [
        ("warning", reason)]
    claimed = await stored_pointer(nc, job)
    assert claimed is not None
    assert (claimed.owner, claimed.step, claimed.object, claimed.resumed_step) == (2, None, "", None)
    await second.checkpoint(b"again", step=1)
    assert await checkpointer(nc, job, 3).restore() == tasks.Restored(b"again", 1, 2)


async def test_a_garbage_pointer_is_a_clear_error_and_left_alone(
    nats_server: NatsServer, buckets: NATS
) -> None:
    nc, job = buckets, "ck-garbage"
    kv = await nc.jetstream().key_value(contract.BUCKET_CHECKPOINTS)
    for garbage in (b"{not json", b'{"job_id": "other-job", "owner": 1}'):
        revision = await kv.put(job, garbage)
        own = checkpointer(nc, job, 1)
        with pytest.raises(checkpoints.CheckpointError, match=rf"jobq_checkpoints\[{job}\].*left as it is"):
            await own.restore()
        with pytest.raises(checkpoints.CheckpointError, match="left as it is"):
            await own.checkpoint(b"state", step=1)
        entry = await kv.get(job)
        assert (entry.value, entry.revision) == (garbage, revision)
    # In a pod: the task fails with that message (exit 1, retried by policy), no hang, no result.
    pod = await start(None, runner_env(nats_server.url, job_id=job, task=TASK, args='{"steps": 3}'))
    assert await pod.wait() == contract.EXIT_TASK_FAILED
    assert "CheckpointError" in pod.stderr and "left as it is" in pod.stderr
    assert ck(job, 1, 1) not in await stored_objects(nc, job)
