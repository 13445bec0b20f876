"""``python -m workers.runner`` as a pod runs it, against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker import contract
from workers import runner, runner_settings

REPO = Path(__file__).resolve().parents[2]
NATS_SERVER = Path(sys.executable).parent / "nats-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def runner_nats_url(tmp_path: Path) -> Iterator[str]:
    """A real JetStream nats-server on a free loopback port (local until tests/conftest.py has one)."""
    if not NATS_SERVER.exists():
        pytest.skip(f"no nats-server at {NATS_SERVER}")
    port = _free_port()
    server = subprocess.Popen(
        [str(NATS_SERVER), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
async def nc(runner_nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(runner_nats_url)
    try:
        yield conn
    finally:
        await conn.drain()


class Pod:
    """One runner process and the heartbeats it published."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.heartbeats: list[contract.AttemptHeartbeat] = []
        self.stderr = ""

    async def wait(self, within_s: float = 60) -> int:
        _, err = await asyncio.wait_for(self.process.communicate(), within_s)
        self.stderr = err.decode()
        assert self.process.returncode is not None
        return self.process.returncode


def runner_env(url: str, *, job_id: str, task: str, args: str = "{}", attempt: int = 1,
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
    env.update(JOBQ_NATS_URL=url, JOBQ_JOB_ID=job_id, JOBQ_ATTEMPT=str(attempt), JOBQ_TASK=task,
               JOBQ_ARGS=args, JOBQ_NODE="node-a", JOBQ_HEARTBEAT_S="0.1")
    env.update(extra or {})
    return env


async def start(nc: NATS | None, env: dict[str, str]) -> Pod:
    heartbeats: list[contract.AttemptHeartbeat] = []
    if nc is not None:
        async def on_heartbeat(msg: Msg) -> None:
            heartbeats.append(contract.AttemptHeartbeat.model_validate_json(msg.data))

        subject = contract.heartbeat_subject(env["JOBQ_JOB_ID"], int(env["JOBQ_ATTEMPT"]))
        await nc.subscribe(subject, cb=on_heartbeat)
        await nc.flush()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.runner", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    pod = Pod(process)
    pod.heartbeats = heartbeats
    return pod


async def run_pod(nc: NATS | None, env: dict[str, str], *, within_s: float = 60) -> Pod:
    pod = await start(nc, env)
    await pod.wait(within_s)
    return pod


async def stored_result(nc: NATS, job_id: str, attempt: int = 1) -> contract.TaskResult | None:
    try:
        kv = await nc.jetstream().key_value(contract.BUCKET_RESULTS)
        entry = await kv.get(contract.result_key(job_id, attempt))
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None
    assert entry.value is not None
    return contract.TaskResult.model_validate_json(entry.value)


async def artifact(nc: NATS, name: str) -> bytes:
    store = await nc.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)
    return (await store.get(name)).data or b""


async def accept(nc: NATS, result: contract.TaskResult) -> None:
    """Store the job record a dispatcher would, with ``result`` accepted (tasks that read another
    job's artifacts read them from its accepted attempt)."""
    now = contract.utcnow()
    attempt = contract.Attempt(number=result.attempt, pod=contract.pod_name(result.job_id, result.attempt),
                               state=contract.AttemptState.SUCCEEDED, created_at=now, writer=result.writer)
    record = contract.JobRecord(spec=contract.JobSpec(id=result.job_id, task="sklearn.train"),
                                phase=contract.JobPhase.SUCCEEDED, attempts=(attempt,),
                                result_attempt=result.attempt, submitted_at=now, updated_at=now)
    js = nc.jetstream()
    try:
        kv = await js.key_value(contract.BUCKET_JOBS)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(bucket=contract.BUCKET_JOBS)
    await kv.put(result.job_id, record.model_dump_json().encode())


# --- success ----------------------------------------------------------------------------------


async def test_train_then_predict(nc: NATS, runner_nats_url: str) -> None:
    pod = await run_pod(nc, runner_env(runner_nats_url, job_id="train-1", task="sklearn.train"))
    assert pod.process.returncode == 0, pod.stderr

    result = await stored_result(nc, "train-1")
    assert result is not None
    assert (result.job_id, result.attempt, result.node) == ("train-1", 1, "node-a")
    assert result.output["accuracy"] > 0.9
    assert result.output["artifact"] == "train-1/1/model.pkl"
    assert result.started_at <= result.finished_at
    assert result.writer is not None and result.writer.pod == contract.pod_name("train-1", 1)
    assert result.writer.node == "node-a"

    model = pickle.loads(await artifact(nc, "train-1/1/model.pkl"))
    assert model.n_features_in_ == 64

    await asyncio.sleep(0.1)  # the last heartbeats are in flight to our subscription
    assert len(pod.heartbeats) >= 2
    assert {(h.job_id, h.attempt, h.node) for h in pod.heartbeats} == {("train-1", 1, "node-a")}
    assert pod.heartbeats[-1].progress == 1.0

    await accept(nc, result)
    pod = await run_pod(nc, runner_env(runner_nats_url, job_id="predict-1", task="sklearn.predict",
                                       args='{"model_job": "train-1", "limit": 200}'))
    assert pod.process.returncode == 0, pod.stderr
    result = await stored_result(nc, "predict-1")
    assert result is not None
    assert result.output["n_predictions"] == 200
    assert result.output["accuracy"] > 0.9
    assert b'"model_job": "train-1"' in await artifact(nc, "predict-1/1/predictions.json")


async def test_heartbeats_carry_progress_while_an_async_task_runs(nc: NATS, runner_nats_url: str) -> None:
    env = runner_env(runner_nats_url, job_id="sleepy", task="demo.sleep", attempt=2,
                     args='{"seconds": 1.0, "progress_steps": 4}')
    pod = await run_pod(nc, env)
    assert pod.process.returncode == 0, pod.stderr
    await asyncio.sleep(0.1)
    progress = [h.progress for h in pod.heartbeats if h.progress is not None]
    assert progress == sorted(progress) and 0.25 <= progress[0] < 1.0 and progress[-1] == 1.0
    assert len(pod.heartbeats) >= 5
    result = await stored_result(nc, "sleepy", 2)
    assert result is not None and result.output == {"slept_s": 1.0, "steps": 4}


async def test_module_function_tasks(nc: NATS, runner_nats_url: str, tmp_path: Path) -> None:
    (tmp_path / "usertasks.py").write_text(textwrap.dedent("""
        import sys

        async def save(args, ctx):
            name = await ctx.asave_artifact("note.txt", args["text"].encode())
            ctx.progress(0.5, "saved")
            return {"name": name, "back": (await ctx.aload_artifact("note.txt")).decode()}

        def bail(args, ctx):
            sys.exit(args["code"])

        async def blocks(args, ctx):
            ctx.save_artifact("x", b"")
    """))
    extra = {"PYTHONPATH": str(tmp_path)}
    env = runner_env(runner_nats_url, job_id="user-1", task="usertasks:save", args='{"text": "hi"}',
                     extra=extra)
    pod = await run_pod(nc, env)
    assert pod.process.returncode == 0, pod.stderr
    result = await stored_result(nc, "user-1")
    assert result is not None and result.output == {"name": "user-1/1/note.txt", "back": "hi"}
    assert await artifact(nc, "user-1/1/note.txt") == b"hi"

    env = runner_env(runner_nats_url, job_id="user-2", task="usertasks:bail", args='{"code": 5}', extra=extra)
    assert (await run_pod(nc, env)).process.returncode == 5

    env = runner_env(runner_nats_url, job_id="user-3", task="usertasks:blocks", extra=extra)
    pod = await run_pod(nc, env)
    assert pod.process.returncode == runner.EXIT_TASK_FAILED
    assert "must use 'await ctx.asave_artifact" in pod.stderr


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "args", "code", "stderr"), [
    ("no.such.task", "{}", runner.EXIT_TASK_NOT_FOUND, "unknown task 'no.such.task'"),
    ("no_such_module_xyz:run", "{}", runner.EXIT_TASK_NOT_FOUND, "cannot import module"),
    ("demo.exit", '{"code": 7}', 7, "exiting with code 7"),
    ("demo.flaky", '{"succeed_on": 3}', runner.EXIT_TASK_FAILED, "RuntimeError: attempt 1 fails"),
    ("sklearn.train", '{"dataset": "mnist"}', runner.EXIT_BAD_ARGS, "'dataset' is 'mnist'"),
    ("sklearn.train", '{"dataset": ', runner.EXIT_BAD_ARGS, "JOBQ_ARGS is not valid JSON"),
    ("sklearn.train", "[1, 2]", runner.EXIT_BAD_ARGS, "must be a JSON object"),
    ("sklearn.predict", '{"model_job": "never-trained"}', runner.EXIT_TASK_FAILED, "ArtifactNotFound"),
])
async def test_failures_map_to_exit_codes(nc: NATS, runner_nats_url: str, task: str, args: str,
                                          code: int, stderr: str) -> None:
    pod = await run_pod(nc, runner_env(runner_nats_url, job_id="fail-1", task=task, args=args))
    assert pod.process.returncode == code, pod.stderr
    assert stderr in pod.stderr
    assert await stored_result(nc, "fail-1") is None


async def test_flaky_succeeds_on_its_attempt(nc: NATS, runner_nats_url: str) -> None:
    env = runner_env(runner_nats_url, job_id="flaky", task="demo.flaky", args='{"succeed_on": 2}', attempt=2)
    pod = await run_pod(nc, env)
    assert pod.process.returncode == 0, pod.stderr
    result = await stored_result(nc, "flaky", 2)
    assert result is not None and result.output == {"attempt": 2, "succeed_on": 2}


async def test_unreachable_nats_exits_4() -> None:
    env = runner_env(f"nats://127.0.0.1:{_free_port()}", job_id="lonely", task="demo.sleep",
                     extra={"JOBQ_NATS_WAIT_S": "1"})
    started = time.monotonic()
    pod = await run_pod(None, env)
    assert pod.process.returncode == runner.EXIT_NATS_UNREACHABLE
    assert "cannot reach NATS" in pod.stderr
    assert time.monotonic() - started < 15


# --- SIGTERM ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "args"), [
    ("demo.sleep", '{"seconds": 60, "progress_steps": 600}'),  # async: cancelled
    ("demo.hog", '{"mb": 1, "seconds": 60}'),                   # sync: its thread is abandoned
])
async def test_sigterm_stops_the_attempt(nc: NATS, runner_nats_url: str, task: str, args: str) -> None:
    pod = await start(nc, runner_env(runner_nats_url, job_id="stopped", task=task, args=args))
    try:
        deadline = time.monotonic() + 20
        while not any(h.progress is not None for h in pod.heartbeats):  # the task is running
            assert time.monotonic() < deadline, "no progress heartbeat"
            await asyncio.sleep(0.05)
        beats = len(pod.heartbeats)
        pod.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await pod.wait(10) == 128 + signal.SIGTERM, pod.stderr
        assert time.monotonic() - started < 5
    finally:
        with contextlib.suppress(ProcessLookupError):
            pod.process.kill()
    await asyncio.sleep(0.1)
    assert len(pod.heartbeats) > beats  # the final heartbeat was flushed
    assert "stopped by SIGTERM" in pod.stderr
    assert await stored_result(nc, "stopped") is None


# --- settings (no server) ---------------------------------------------------------------------


def test_settings_from_env() -> None:
    settings = runner_settings.RunnerSettings.from_env({
        "JOBQ_NATS_URL": "nats://a:4222, nats://b:4222", "JOBQ_JOB_ID": "j", "JOBQ_ATTEMPT": "3",
        "JOBQ_TASK": "demo.sleep", "JOBQ_ARGS": '{"seconds": 2}', "JOBQ_HEARTBEAT_S": "0.5",
        "JOBQ_NATS_TOKEN": "secret"})
    assert settings.nats_servers == ("nats://a:4222", "nats://b:4222")
    assert (settings.attempt, settings.args, settings.heartbeat_s) == (3, {"seconds": 2}, 0.5)
    assert settings.node is None and settings.auth == {"token": "secret"}
    assert "secret" not in repr(settings)


@pytest.mark.parametrize("change", [
    {"JOBQ_JOB_ID": ""}, {"JOBQ_ATTEMPT": "0"}, {"JOBQ_ATTEMPT": "x"}, {"JOBQ_TASK": " "},
    {"JOBQ_ARGS": "nope"}, {"JOBQ_ARGS": "3"}, {"JOBQ_HEARTBEAT_S": "0"}, {"JOBQ_HEARTBEAT_S": "nan"},
])
def test_settings_reject_bad_env(change: dict[str, Any]) -> None:
    env = {"JOBQ_JOB_ID": "j", "JOBQ_ATTEMPT": "1", "JOBQ_TASK": "demo.sleep", **change}
    with pytest.raises(runner_settings.SettingsError):
        runner_settings.RunnerSettings.from_env(env)


# --- arguments from the job record (JOBQ_ARGS_FROM=record) -------------------------------------


async def test_big_args_are_read_from_the_job_record(nc: NATS, runner_nats_url: str) -> None:
    data = os.urandom(450 * 1024).hex()  # 900 KiB: far beyond one environment string (128 KiB)
    now = contract.utcnow()
    record = contract.JobRecord(spec=contract.JobSpec(id="big-1", task="demo.echo_size", args={"data": data}),
                                submitted_at=now, updated_at=now)
    kv = await nc.jetstream().create_key_value(bucket=contract.BUCKET_JOBS, history=1)
    await kv.put("big-1", record.model_dump_json().encode())
    env = runner_env(runner_nats_url, job_id="big-1", task="demo.echo_size",
                     extra={"JOBQ_ARGS": "", contract.ENV_ARGS_FROM: contract.ARGS_FROM_RECORD})
    pod = await run_pod(nc, env)
    assert pod.process.returncode == 0, pod.stderr
    result = await stored_result(nc, "big-1")
    assert result is not None
    assert result.output == {"chars": len(data), "bytes": len(data),
                             "sha256": hashlib.sha256(data.encode()).hexdigest()}

    missing = runner_env(runner_nats_url, job_id="no-record", task="demo.echo_size",
                         extra={"JOBQ_ARGS": "", contract.ENV_ARGS_FROM: contract.ARGS_FROM_RECORD})
    pod = await run_pod(nc, missing)
    assert pod.process.returncode == runner.EXIT_BAD_ARGS
    assert "jobq_jobs[no-record].spec.args: the job has no record" in pod.stderr
