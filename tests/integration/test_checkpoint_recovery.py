"""A node killed under a training job that checkpoints every epoch (embedded stack, real node
agents and pods, real SIGKILL): the replacement resumes from the newest checkpoint the killed pod
saved, the final model is the one an unbroken run of the same seed makes, and the work thrown
away is at most one checkpoint interval plus the detection time, while the same kill costs a job
without checkpoints its whole run so far.

Evidence: the pointer versions the pods wrote (a watcher on KV ``jobq_checkpoints`` from before
the job starts), the kill time the test took, and the models the attempts stored; the dispatcher's
``work_lost_s`` is checked against them. All jobs start on one node; a second node joins before
the kill so that the same kill hits every killed job and the replacements have somewhere to go.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker import contract
from chaos import checkpoint_evidence as evidence
from tests import training_runs as tr
from tests.conftest import FAST_ENV, running_stack, submitter_client
from tests.integration.helpers import node_status, wait_running

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DETECTION_S = float(FAST_ENV["JOBQ_NODE_TIMEOUT_S"])
"""A silent node is lost after JOBQ_NODE_TIMEOUT_S (3 s, the default too)."""
HEARTBEAT_S = 1.0
"""Attempts beat every JOBQ_HEARTBEAT_S (default): how stale the dispatcher's last sign of life may be."""


async def test_node_kill_resumes_sklearn_training_from_its_newest_checkpoint(tmp_path: Path) -> None:
    epochs, epoch_s, kill_after = 14, 1.0, 8  # the kill comes 8 epochs in: more than interval + detection
    ckpt, nockpt, unbroken = tr.job_id("ckpt"), tr.job_id("nockpt"), tr.job_id("unbroken")
    async with running_stack(tmp_path, nodes=1) as stack, submitter_client(stack) as client:
        async with evidence.watch_pointer(client.js, ckpt) as log, \
                evidence.watch_pointer(client.js, nockpt) as log_none:
            for job, checkpoint in ((ckpt, True), (nockpt, False)):
                args = tr.train_args(checkpoint=checkpoint, epochs=epochs, epoch_seconds=epoch_s)
                await client.submit(id=job, task=tr.SKLEARN_TASK, args=args)
            await wait_running(client, [ckpt, nockpt], count=2)
            await stack.start_node("node-2")
            await node_status(stack, "node-2")
            await tr.wait_checkpoints(client, ckpt, at_least=kill_after)
            await asyncio.sleep(tr.MID_EPOCH * epoch_s)  # the kill lands mid-epoch, not just after a save
            killed_at = contract.utcnow()
            stack.signal_node("node-1", signal.SIGKILL)
            await tr.wait_attempts(client, ckpt, count=2)
            # node-1 is known dead now: the unbroken run of the same seed goes to node-2.
            await client.submit(id=unbroken, task=tr.SKLEARN_TASK,
                                args=tr.train_args(checkpoint=True, epochs=epochs, epoch_seconds=epoch_s))
            records = await client.wait([ckpt, nockpt, unbroken], timeout=180)
        assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}, records
        for job in (ckpt, nockpt):
            lost, replacement = records[job].attempts[0], records[job].attempts[-1]
            assert len(records[job].attempts) == 2, records[job].attempts
            assert lost.node == "node-1" and lost.reason == contract.FailureReason.NODE_LOST
            assert replacement.node == "node-2" and records[job].result_attempt == 2
        assert len(records[unbroken].attempts) == 1 and records[unbroken].attempts[0].node == "node-2"

        with_ckpt = tr.judge(records[ckpt], log, killed_at)
        without = tr.judge(records[nockpt], log_none, killed_at)
        tr.report("embedded", with_ckpt, without, detection_s=DETECTION_S)
        # The replacement resumed from the newest checkpoint the killed pod saved (pointer owner 1's
        # last version), and the pointer's owner never went back.
        assert with_ckpt.saved_step is not None and with_ckpt.saved_step >= kill_after
        assert with_ckpt.resumed_step == with_ckpt.saved_step
        # ... and really went on from there: it saved one checkpoint per remaining epoch.
        assert with_ckpt.redone == epochs - with_ckpt.saved_step, with_ckpt
        assert log.owners() == sorted(log.owners()) and log.owners()[-1] == 2
        saved = log.last_of(1)
        # (written before the kill; the pod dies with its node at once: PR_SET_PDEATHSIG)
        assert saved is not None and saved.at is not None
        assert saved.at <= killed_at + dt.timedelta(seconds=0.2)
        stamped = records[ckpt].attempts[1].checkpoints  # the dispatcher's copy agrees
        assert stamped is not None and stamped.resumed_step == with_ckpt.saved_step
        assert stamped.resumed_from_attempt == 1
        # Work lost: at most one checkpoint interval plus detection, by the pods' evidence and by
        # the dispatcher's figure, which may lag the kill by up to one heartbeat.
        assert with_ckpt.work_lost_s <= with_ckpt.bound(DETECTION_S), with_ckpt
        assert with_ckpt.dispatcher_work_lost_s is not None
        assert with_ckpt.dispatcher_work_lost_s <= with_ckpt.bound(DETECTION_S), with_ckpt
        assert abs(with_ckpt.dispatcher_work_lost_s - with_ckpt.work_lost_s) <= HEARTBEAT_S + 0.5, with_ckpt
        # The same kill without checkpoints threw the whole run so far away: more than the bound
        # (the check above can fail), and its replacement started from scratch.
        assert without.resumed_step is None and not log_none.versions
        assert without.work_lost_s > with_ckpt.bound(DETECTION_S), without
        assert without.dispatcher_work_lost_s is not None
        assert abs(without.dispatcher_work_lost_s - without.work_lost_s) <= HEARTBEAT_S + 0.5, without
        # The model: identical to the unbroken run of the same seed, resumed or restarted.
        digests = {job: await tr.model_digest(client, job) for job in (ckpt, nockpt, unbroken)}
        assert digests[ckpt] == digests[unbroken] == digests[nockpt], digests


TF_ACCURACY_TOLERANCE = 0.02
"""A resumed tf.train run's test accuracy may differ from an unbroken run's of the same seed by at
most this much (the task runs deterministic ops on one thread: on one machine they come out equal)."""


def tensorflow_import_error() -> str | None:
    """Why ``import tensorflow`` fails, None if it works (in a child process: TensorFlow's import
    takes ~700 MB that this test process does not need)."""
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return None if probe.returncode == 0 else probe.stderr.strip()[-300:]


async def test_node_kill_resumes_tf_training_with_the_accuracy_of_an_unbroken_run(tmp_path: Path) -> None:
    problem = await asyncio.to_thread(tensorflow_import_error)
    if problem is not None:
        pytest.skip(f"`import tensorflow` fails (the jobq[tf] extra): {problem}")
    epochs, epoch_s, kill_after = 8, 1.0, 4
    ckpt, unbroken = tr.job_id("tfckpt"), tr.job_id("tfunbroken")
    args = tr.train_args(checkpoint=True, epochs=epochs, epoch_seconds=epoch_s)
    async with running_stack(tmp_path, nodes=1) as stack, submitter_client(stack) as client:
        async with evidence.watch_pointer(client.js, ckpt) as log:
            await client.submit(id=ckpt, task=tr.TF_TASK, args=args)
            await wait_running(client, [ckpt], count=1)
            await stack.start_node("node-2")
            await node_status(stack, "node-2")
            await tr.wait_checkpoints(client, ckpt, at_least=kill_after, timeout=180)
            await asyncio.sleep(tr.MID_EPOCH * epoch_s)
            killed_at = contract.utcnow()
            stack.signal_node("node-1", signal.SIGKILL)
            await tr.wait_attempts(client, ckpt, count=2)
            await client.submit(id=unbroken, task=tr.TF_TASK, args=args)
            records = await client.wait([ckpt, unbroken], timeout=240)
        assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}, records
        attempts = records[ckpt].attempts
        assert [a.node for a in attempts] == ["node-1", "node-2"], attempts
        loss = tr.judge(records[ckpt], log, killed_at)
        tr.report("embedded tf.train", loss, None, detection_s=DETECTION_S)
        assert loss.saved_step is not None and loss.saved_step >= kill_after
        assert loss.resumed_step == loss.saved_step and loss.redone == epochs - loss.saved_step, loss
        assert loss.work_lost_s <= loss.bound(DETECTION_S), loss
        resumed, whole = (await client.result(ckpt)).output, (await client.result(unbroken)).output
        print(f"tf.train accuracy resumed {resumed['accuracy']:.4f}, unbroken {whole['accuracy']:.4f}")
        assert resumed["resumed_from"] == loss.saved_step and whole["resumed_from"] is None
        assert abs(resumed["accuracy"] - whole["accuracy"]) <= TF_ACCURACY_TOLERANCE, (resumed, whole)
