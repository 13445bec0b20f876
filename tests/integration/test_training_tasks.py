"""The long training tasks through the real runner (``python -m workers.runner``) on a real
nats-server: attempt 1 is killed (SIGKILL) mid-run, attempt 2 resumes from the checkpoint that NATS
holds, and ends with the model an unbroken run of the same seed ends with.

The evidence is what NATS holds: the job's checkpoint pointer (KV ``jobq_checkpoints``), the
results and the stored model artifacts; the runner process is killed from outside."""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
import signal
from typing import Any

import nats.js.errors
import numpy as np
import pytest
from nats.aio.client import Client as NATS

from broker import contract
from broker.embedded.natsserver import NatsServer
from tests.integration.test_runner import artifact, run_pod, runner_env, start, stored_result
from workers import runner_context
from workers.tasks import incremental_tasks


def _checkpoints_implemented() -> bool:
    return "NotImplementedError" not in inspect.getsource(runner_context.RunnerContext.checkpoint)


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not _checkpoints_implemented(),
                       reason="the runner's ctx.checkpoint is still a stub (workers/runner_context.py "
                              "raises NotImplementedError)"),
]

EPOCHS = 6


async def _pointers(nc: NATS) -> Any:
    """KV jobq_checkpoints, made as the dispatcher's store makes it when no dispatcher ran yet."""
    js = nc.jetstream()
    try:
        return await js.key_value(contract.BUCKET_CHECKPOINTS)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(bucket=contract.BUCKET_CHECKPOINTS, history=1)


async def _pointer(nc: NATS, job_id: str) -> contract.CheckpointPointer | None:
    try:
        entry = await (await _pointers(nc)).get(contract.checkpoint_pointer_key(job_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    assert entry.value is not None
    return contract.CheckpointPointer.model_validate_json(entry.value)


async def _kill_after_epoch(nc: NATS, url: str, job_id: str, task: str, args: str, epoch: int) -> None:
    """Run attempt 1 of ``job_id`` and SIGKILL it once NATS holds its checkpoint of ``epoch``."""
    pod = await start(nc, runner_env(url, job_id=job_id, task=task, args=args))
    try:
        async with asyncio.timeout(180):
            while (p := await _pointer(nc, job_id)) is None or (p.step or 0) < epoch:
                assert pod.process.returncode is None, "attempt 1 ended before it was killed"
                await asyncio.sleep(0.1)
    finally:
        pod.process.send_signal(signal.SIGKILL)
        await pod.wait()
    assert pod.process.returncode == -signal.SIGKILL


@pytest.mark.parametrize(("task", "args"), [
    # tf.train's kill and resume is tested on the whole stack (test_checkpoint_recovery.py): a
    # second TensorFlow run here would add a minute to the suite for nothing new.
    ("sklearn.train_incremental", {"model": "mlp", "seed": 3}),
])
async def test_a_killed_attempt_resumes_from_the_newest_checkpoint(
        nc: NATS, nats_server: NatsServer, task: str, args: dict[str, Any]) -> None:
    url = nats_server.url
    await _pointers(nc)
    # Paced epochs so that the kill lands mid-run (0.5 s apiece: well above an epoch's own cost).
    raw = json.dumps({**args, "epochs": EPOCHS, "epoch_seconds": 0.5})

    pod = await run_pod(nc, runner_env(url, job_id="whole", task=task, args=raw), within_s=180)
    assert pod.process.returncode == 0, pod.stderr
    whole = await stored_result(nc, "whole")
    assert whole is not None and whole.output["resumed_from"] is None

    await _kill_after_epoch(nc, url, "broken", task, raw, epoch=2)
    killed_at = await _pointer(nc, "broken")
    assert killed_at is not None and killed_at.owner == 1 and killed_at.step is not None
    assert 2 <= killed_at.step < EPOCHS
    assert await stored_result(nc, "broken", 1) is None

    pod = await run_pod(nc, runner_env(url, job_id="broken", task=task, args=raw, attempt=2), within_s=180)
    assert pod.process.returncode == 0, pod.stderr
    resumed = await stored_result(nc, "broken", 2)
    assert resumed is not None
    assert resumed.output["resumed_from"] == killed_at.step
    assert resumed.output["checkpoints"] == EPOCHS - killed_at.step
    final = await _pointer(nc, "broken")
    assert final is not None and (final.owner, final.step, final.resumed_step) == (2, EPOCHS, killed_at.step)

    ours = pickle.loads(await artifact(nc, resumed.output["artifact"])).named_steps["model"]
    theirs = pickle.loads(await artifact(nc, whole.output["artifact"])).named_steps["model"]
    assert incremental_tasks.model_digest(ours) == incremental_tasks.model_digest(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(ours.coefs_, theirs.coefs_, strict=True))


async def test_without_checkpoints_a_killed_attempt_starts_over(nc: NATS, nats_server: NatsServer) -> None:
    """The negative control: ``checkpoint: false`` leaves nothing to resume from."""
    url = nats_server.url
    await _pointers(nc)
    raw = json.dumps({"epochs": 6, "epoch_seconds": 0.5, "checkpoint": False})
    pod = await start(nc, runner_env(url, job_id="nockpt", task="sklearn.train_incremental", args=raw))
    async with asyncio.timeout(60):  # killed once it reported its second epoch
        while not any(h.message == "epoch 2/6" for h in pod.heartbeats):
            await asyncio.sleep(0.1)
    pod.process.send_signal(signal.SIGKILL)
    await pod.wait()
    pod = await run_pod(nc, runner_env(url, job_id="nockpt", task="sklearn.train_incremental", args=raw,
                                       attempt=2))
    assert pod.process.returncode == 0, pod.stderr
    result = await stored_result(nc, "nockpt", 2)
    assert result is not None and (result.output["resumed_from"], result.output["checkpoints"]) == (None, 0)
    assert await _pointer(nc, "nockpt") is None
