"""Outputs scoped to the attempt, against real servers: a result is created once by its own pod,
an attempt's artifacts never replace another's, readers (the dispatcher, sklearn.predict, the
SDK) take only the accepted attempt's outputs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from broker import contract
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack
from submitter.client import ArtifactNotFound, JobqClient, OutputRejected
from tests import checker
from tests.conftest import running_stack, submitter_client
from tests.integration.helpers import node_status, wait_running
from tests.integration.test_runner import Pod, run_pod, runner_env, stored_result
from workers import results, runner, runner_settings

TASKS = textwrap.dedent('''
    import os
    import time


    def note(args, ctx):
        """Save artifact note.txt; return its key."""
        return {"key": ctx.save_artifact("note.txt", args["text"].encode()),
                "back": ctx.load_artifact("note.txt").decode()}


    def quits_once(args, ctx):
        """Attempt 1 exits 0 without storing a result (as if it died right after exiting);
        later attempts return normally."""
        time.sleep(args.get("seconds", 1))
        if ctx.attempt == 1:
            os._exit(0)
        return {"attempt": ctx.attempt, "pod": os.environ.get("JOBQ_POD")}
''')


@pytest.fixture
def task_path(tmp_path: Path) -> Path:
    path = tmp_path / "usertasks"
    path.mkdir()
    (path / "outputs_tasks.py").write_text(TASKS)
    return path


def pod_env(url: str, *, job_id: str, task: str, attempt: int = 1, uid: str, args: str = "{}",
            extra: dict[str, str] | None = None) -> dict[str, str]:
    return runner_env(url, job_id=job_id, task=task, attempt=attempt, args=args, extra={
        contract.ENV_POD: contract.pod_name(job_id, attempt), contract.ENV_POD_UID: uid, **(extra or {})})


async def stored_artifact(nc: NATS, key: str) -> tuple[bytes, contract.Writer | None]:
    store = await nc.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)
    got = await store.get(key)
    return bytes(got.data or b""), contract.Writer.from_object_headers(got.info.headers)


async def accept(nc: NATS, job_id: str, attempt: int) -> None:
    """Store the record a dispatcher would after accepting ``attempt``'s stored result (the
    attempts before it failed): tasks read another job's artifacts from its accepted attempt."""
    stored = await stored_result(nc, job_id, attempt)
    assert stored is not None
    now = contract.utcnow()
    done, failed = contract.AttemptState.SUCCEEDED, contract.AttemptState.FAILED
    attempts = tuple(
        contract.Attempt(number=n, pod=contract.pod_name(job_id, n), created_at=now,
                         state=done if n == attempt else failed,
                         writer=stored.writer if n == attempt else None)
        for n in range(1, attempt + 1))
    record = contract.JobRecord(spec=contract.JobSpec(id=job_id, task="sklearn.train"),
                                phase=contract.JobPhase.SUCCEEDED, attempts=attempts, result_attempt=attempt,
                                submitted_at=now, updated_at=now)
    await put_record(nc, record)


async def put_record(nc: NATS, record: contract.JobRecord) -> None:
    js = nc.jetstream()
    try:
        kv = await js.key_value(contract.BUCKET_JOBS)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(bucket=contract.BUCKET_JOBS)
    await kv.put(record.spec.id, record.model_dump_json().encode())


def log_events(pod: Pod) -> list[dict[str, object]]:
    events = []
    for line in pod.stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


# --- the worker: results created once, artifacts under the attempt --------------------------------


async def test_a_result_is_created_once_and_another_writer_never_overwrites_it(
        nc: NATS, nats_server: NatsServer) -> None:
    url = nats_server.url
    first = await run_pod(nc, pod_env(url, job_id="once", task="demo.sleep", uid="uid-a",
                                      args='{"seconds": 0.1}'))
    assert first.process.returncode == 0, first.stderr
    stored = await stored_result(nc, "once")
    assert stored is not None and stored.writer is not None
    assert (stored.writer.pod, stored.writer.pod_uid, stored.writer.node) == ("job-once-1", "uid-a", "node-a")
    assert stored.writer.boot_id == runner_settings.read_boot_id()

    # Another pod of the same attempt (a second pod of that name) finishes later: refused.
    second = await run_pod(nc, pod_env(url, job_id="once", task="demo.sleep", uid="uid-b",
                                       args='{"seconds": 0.1}'))
    assert second.process.returncode == runner.EXIT_RESULT_EXISTS == 5
    assert "another result is already stored under once.1" in second.stderr
    refused = [e for e in log_events(second) if e.get("event") == "result_exists"]
    assert refused and refused[0]["job_id"] == "once" and refused[0]["attempt"] == 1
    assert await stored_result(nc, "once") == stored

    # Our own write retried (its reply lost) is success; anyone else's is refused.
    js = nc.jetstream()
    revision = await results.write_result(js, stored)
    assert await results.write_result(js, stored) == revision
    with pytest.raises(results.ResultExists):
        await results.write_result(js, stored.model_copy(update={"output": {"forged": True}}))
    assert await stored_result(nc, "once") == stored


async def test_an_attempts_artifact_never_replaces_another_attempts(
        nc: NATS, nats_server: NatsServer, task_path: Path) -> None:
    url = nats_server.url
    extra = {"PYTHONPATH": str(task_path)}

    async def note(attempt: int, uid: str, text: str) -> Pod:
        return await run_pod(nc, pod_env(url, job_id="art", task="outputs_tasks:note", attempt=attempt,
                                         uid=uid, args=json.dumps({"text": text}), extra=extra))

    # The replacement (attempt 2) writes first; the superseded attempt 1 keeps running and
    # writes after it: each under its own attempt.
    assert (await note(2, "uid-2", "two")).process.returncode == 0
    stale = await note(1, "uid-1", "one")
    assert stale.process.returncode == 0, stale.stderr
    assert (await stored_result(nc, "art", 1) or pytest.fail("no result")).output == {
        "key": "art/1/note.txt", "back": "one"}
    data, writer = await stored_artifact(nc, "art/2/note.txt")
    assert data == b"two" and writer is not None and writer.pod_uid == "uid-2"
    data, writer = await stored_artifact(nc, "art/1/note.txt")
    assert data == b"one" and writer is not None and (writer.pod, writer.pod_uid) == ("job-art-1", "uid-1")

    # Another pod of attempt 2's name cannot replace attempt 2's artifact either.
    intruder = await note(2, "uid-x", "intruder")
    assert intruder.process.returncode == runner.EXIT_TASK_FAILED
    assert "ArtifactExists" in intruder.stderr and "not replacing it" in intruder.stderr
    data, writer = await stored_artifact(nc, "art/2/note.txt")
    assert data == b"two" and writer is not None and writer.pod_uid == "uid-2"


async def test_predict_uses_the_model_of_the_accepted_attempt(nc: NATS, nats_server: NatsServer) -> None:
    url = nats_server.url

    async def train(attempt: int, dataset: str) -> None:
        pod = await run_pod(nc, pod_env(url, job_id="model", task="sklearn.train", attempt=attempt,
                                        uid=f"uid-{attempt}", args=json.dumps({"dataset": dataset})))
        assert pod.process.returncode == 0, pod.stderr

    async def predict(job_id: str) -> Pod:
        return await run_pod(nc, pod_env(url, job_id=job_id, task="sklearn.predict", uid=f"uid-{job_id}",
                                         args='{"model_job": "model", "dataset": "digits"}'))

    # Attempt 2 (digits, 64 features) is accepted; the superseded attempt 1 stored an iris model
    # (4 features) after it. Loading attempt 1's model would fail on digits.
    await train(2, "digits")
    await train(1, "iris")
    no_record = await predict("p-0")
    assert no_record.process.returncode == runner.EXIT_TASK_FAILED
    assert "no job model" in no_record.stderr

    await accept(nc, "model", 2)
    good = await predict("p-1")
    assert good.process.returncode == 0, good.stderr
    out = (await stored_result(nc, "p-1") or pytest.fail("no result")).output
    assert out["n_predictions"] == 1797 and out["accuracy"] > 0.9

    await accept(nc, "model", 1)  # as if attempt 1 had been accepted: its iris model is used
    wrong = await predict("p-2")
    assert wrong.process.returncode == runner.EXIT_BAD_ARGS
    assert "takes 4 features" in wrong.stderr

    running = contract.JobRecord(spec=contract.JobSpec(id="model", task="sklearn.train"),
                                 phase=contract.JobPhase.RUNNING, submitted_at=contract.utcnow(),
                                 updated_at=contract.utcnow())
    await put_record(nc, running)
    unfinished = await predict("p-3")
    assert unfinished.process.returncode == runner.EXIT_TASK_FAILED
    assert "job model has no accepted result (it is running)" in unfinished.stderr

    # A record that accepted attempt 2 but whose recorded writer is another pod: nothing is read.
    await accept(nc, "model", 2)
    record = await put_forged_writer(nc, "model")
    assert record.result_attempt == 2
    forged = await predict("p-4")
    assert forged.process.returncode == runner.EXIT_TASK_FAILED
    assert "fails the writer check" in forged.stderr


async def put_forged_writer(nc: NATS, job_id: str) -> contract.JobRecord:
    kv = await nc.jetstream().key_value(contract.BUCKET_JOBS)
    record = contract.JobRecord.model_validate_json((await kv.get(job_id)).value or b"")
    accepted = contract.accepted_attempt(record)
    assert accepted is not None and accepted.writer is not None
    forged = accepted.model_copy(update={"writer": accepted.writer.model_copy(update={"pod_uid": "forged"})})
    record = record.model_copy(update={"attempts": (*record.attempts[:-1], forged)})
    await put_record(nc, record)
    return record


# --- the dispatcher and the SDK -------------------------------------------------------------------


async def test_the_dispatcher_refuses_a_result_its_attempts_pod_did_not_write(
        tmp_path: Path, task_path: Path) -> None:
    """A result stored under the current attempt's key by someone else (here: before the pod
    exits 0 without storing one) is not accepted: the attempt fails and the next one's own
    result is the job's. Before writers were checked, the forged result was accepted."""
    async with running_stack(tmp_path, env={"PYTHONPATH": str(task_path)}) as stack, \
            submitter_client(stack) as client:
        handle = await client.submit(task="outputs_tasks:quits_once", args={"seconds": 3},
                                     retry={"max_attempts": 3, "backoff_base_s": 0.1})
        (running,) = await wait_running(client, [handle.id], count=1, timeout=60)
        assert running.current is not None and running.current.number == 1
        impostor = contract.Writer(pod=running.current.pod, pod_uid="forged-uid", node=running.current.node)
        forged = contract.TaskResult(
            job_id=handle.id, attempt=1, node=running.current.node, output={"forged": True},
            writer=impostor, started_at=contract.utcnow(), finished_at=contract.utcnow())
        # The forger has the operator's rights (a submitter or another pod may not write here at
        # all: tests/integration/test_nats_roles.py); the writer check must stop even that.
        forger = await nats.connect(stack.nats_url, **stack.nats_options("operator"))
        kv = await forger.jetstream().key_value(contract.BUCKET_RESULTS)
        await kv.create(contract.result_key(handle.id, 1), forged.model_dump_json().encode())

        result = await handle.result(timeout=90)
        record = await client.get(handle.id)
        assert record is not None and record.result_attempt == 2, record
        assert result.output == {"attempt": 2, "pod": contract.pod_name(handle.id, 2)}
        assert result.writer is not None and result.writer.pod == contract.pod_name(handle.id, 2)
        assert result.writer.pod_uid and result.writer.pod_uid != "forged-uid"
        assert record.attempts[1].writer == result.writer
        first = record.attempts[0]
        assert first.reason == contract.FailureReason.APP_ERROR
        assert "without storing a result" in first.message

        log = (stack.logs / "dispatcher-0.log").read_text()
        rejected = [json.loads(line) for line in log.splitlines()
                    if '"result_rejected"' in line and handle.id in line]
        assert rejected and "forged-uid" in str(rejected[0]["reason"]), log[-3000:]

        # The SDK checks the stamp against the writer the dispatcher accepted.
        impostor = impostor.model_copy(update={"pod": contract.pod_name(handle.id, 2)})
        replaced = result.model_copy(update={"output": {"forged": True}, "writer": impostor})
        await kv.put(contract.result_key(handle.id, 2), replaced.model_dump_json().encode())
        with pytest.raises(OutputRejected, match="uid"):
            await client.result(handle.id)
        await forger.close()


async def test_the_sdk_hands_out_the_accepted_attempts_artifacts_only(
        stack: Stack, client: JobqClient) -> None:
    trained = await client.submit(task="sklearn.train", args={"dataset": "iris", "model": "knn"})
    result = await trained.result(timeout=120)
    assert result.output["artifact"] == contract.artifact_key(trained.id, 1, "model.pkl")
    model = await client.artifact(trained.id, "model.pkl")
    assert model[:1] == b"\x80"  # a pickle
    with pytest.raises(ArtifactNotFound, match=r"stored no artifact 'nope\.bin'"):
        await client.artifact(trained.id, "nope.bin")

    predicted = await client.submit(task="sklearn.predict",
                                    args={"model_job": trained.id, "dataset": "iris"})
    assert (await predicted.result(timeout=120)).output["accuracy"] > 0.9
    assert json.loads(await client.artifact(predicted.id, "predictions.json"))["model_job"] == trained.id

    # An object under the accepted attempt's key written by another pod is not handed out, even
    # one stamped with the accepted writer: its bytes are not those the attempt's result lists.
    # (Another pod may write objects: NATS cannot scope object names. It forges as the operator
    # here only to reach the object store without being a pod.)
    forger = await nats.connect(stack.nats_url, **stack.nats_options("operator"))
    store = await forger.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)
    stranger = contract.Writer(pod=contract.pod_name(trained.id, 1), pod_uid="stranger")
    await store.put(contract.artifact_key(trained.id, 1, "extra.txt"), b"x",
                    meta=nats.js.api.ObjectMeta(headers=stranger.object_headers()))
    with pytest.raises(OutputRejected, match="stranger"):
        await client.artifact(trained.id, "extra.txt")
    assert result.writer is not None
    await store.put(contract.artifact_key(trained.id, 1, "model.pkl"), b"\x80forged",
                    meta=nats.js.api.ObjectMeta(headers=result.writer.object_headers()))
    with pytest.raises(OutputRejected, match="not those attempt 1 saved"):
        await client.artifact(trained.id, "model.pkl")
    await forger.close()

    sleeper = await client.submit(task="demo.sleep", args={"seconds": 30})
    await wait_running(client, [sleeper.id], count=1)
    with pytest.raises(ArtifactNotFound, match="has no accepted result"):
        await client.artifact(sleeper.id, "anything")
    await client.cancel(sleeper.id)


# --- a superseded attempt that keeps running and writes ---------------------------------------------


@pytest.mark.timeout(300)
async def test_frozen_agent_whose_pod_keeps_writing_after_the_replacement_started(tmp_path: Path) -> None:
    """The node agent is frozen (SIGSTOP) with its pods, so the node is lost and its attempts are
    replaced elsewhere; then only the pods resume. Nothing can kill them (their agent is still
    frozen), so each writes its result and artifact after its replacement started: some while
    the replacement runs, the others after the replacement's result was accepted (the order in
    which per-job artifacts would have been overwritten). The checker must count the stale
    writes, and find none of them visible: no lost, duplicated, unproven or stale-visible job."""
    ledger = tmp_path / "ledger.jsonl"
    async with running_stack(tmp_path) as stack, submitter_client(stack) as client:
        specs = checker.witness_specs(6, ledger, seconds=8, prefix="frozen", progress_steps=8)
        acked = await checker.submit_witnessed(client, specs)
        ids = sorted(acked)
        running = await wait_running(client, ids, count=6, timeout=90)
        victim = max(stack.nodes, key=lambda n: sum(1 for r in running if r.current and r.current.node == n))
        status = await node_status(stack, victim)
        pods = sorted((p for p in status.pods if p.pid and p.phase == contract.PodPhase.RUNNING),
                      key=lambda p: p.job_id)
        assert pods, f"{victim} runs no pod"
        early, late = pods[:len(pods) // 2], pods[len(pods) // 2:]
        stack.signal_node(victim, signal.SIGSTOP)
        for pod in pods:
            os.killpg(pod.pid or 0, signal.SIGSTOP)
        try:
            async def replaced(pod: contract.PodStatus, *, phase: contract.JobPhase) -> bool:
                record = await client.get(pod.job_id)
                current = record.current if record is not None else None
                if record is None or current is None or current.number <= pod.attempt:
                    return False
                assert current.node != victim
                if record.phase == contract.JobPhase.SUCCEEDED:
                    return True  # (the early ones: unlikely in 8 s, and then as good as a late one)
                return phase == contract.JobPhase.RUNNING and current.state == contract.AttemptState.RUNNING

            async def resume(group: list[contract.PodStatus], *, once: contract.JobPhase) -> None:
                for pod in group:
                    await eventually(functools.partial(replaced, pod, phase=once), timeout=90,
                                     what=f"{pod.job_id}: the replacement of attempt {pod.attempt} {once}")
                for pod in group:  # only the pod resumes: its agent stays frozen, nothing kills it
                    os.killpg(pod.pid or 0, signal.SIGCONT)
                for pod in group:
                    await eventually(functools.partial(ended, pod), timeout=60,
                                     what=f"{pod.job_id}: the stale attempt {pod.attempt}'s end line")

            async def ended(pod: contract.PodStatus) -> bool:
                lines, _ = checker.read_ledger(ledger)
                return any(line.event == "end" and (line.job_id, line.attempt) == (pod.job_id, pod.attempt)
                           for line in lines)

            await resume(early, once=contract.JobPhase.RUNNING)
            await resume(late, once=contract.JobPhase.SUCCEEDED)
            for pod in pods:  # each wrote its artifact, under its own attempt
                key = contract.artifact_key(pod.job_id, pod.attempt, checker.WITNESS_ARTIFACT)
                data, writer = await stored_artifact(client.nc, key)
                assert data and writer is not None and (writer.pod, writer.pod_uid) == (pod.name, pod.uid)
            await client.wait(ids, timeout=120)
        finally:
            for pod in pods:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.pid or 0, signal.SIGCONT)
            stack.signal_node(victim, signal.SIGCONT)
        report = await checker.check(client, acked=acked, ledger=ledger, timeout_s=120, settle_s=2)
        print("checker:", json.dumps(report.summary(), sort_keys=True))  # the figures, with -s
        assert report.defects == 0, report.describe()
        assert report.stale_writes >= len(pods), report.describe()
        for pod in pods:
            record = await client.get(pod.job_id)
            assert record is not None and record.result_attempt is not None
            assert record.result_attempt > pod.attempt
            stale_result = await stored_result(client.nc, pod.job_id, pod.attempt)
            assert stale_result is not None and stale_result.writer is not None
            assert stale_result.writer.pod_uid == pod.uid  # written, and never accepted


async def eventually(check: Callable[[], Awaitable[bool]], *, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        await asyncio.sleep(0.2)
