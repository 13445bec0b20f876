"""A Kubernetes node dies under a training job that checkpoints every epoch (the real control
plane, kubelets at the stock cadence, the machine's kubelet and pods SIGKILLed): the replacement
resumes from the newest checkpoint the killed pod saved, the final model is identical to an
unbroken run of the same seed, and the work lost is at most one interval plus detection, while the
same kill costs a job without checkpoints its whole run so far.

Both training jobs are placed on one node by cordoning the other two while they are scheduled
(uncordoned before the kill, so the replacements have room). The evidence is the pointer versions
the pods wrote (a watcher on KV ``jobq_checkpoints``), the kill time and the stored models.
"""

from __future__ import annotations

import asyncio

import pytest

from broker import contract
from broker.embedded.stack import Stack
from chaos import checkpoint_evidence as evidence
from submitter.client import JobqClient
from tests import training_runs as tr
from tests.conftest import FAST_ENV
from tests.integration.helpers import wait_running
from tests.k8s.cluster import NODE_NAMES, DevCluster
from tests.k8s.test_k8s_e2e import kubectl
from tests.k8s.test_k8s_node_loss import wait_beating

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]

DETECTION_S = float(FAST_ENV["JOBQ_HEARTBEAT_TIMEOUT_S"])
"""Every attempt on the killed node falls silent, and no other attempt beats elsewhere: the
dispatcher tells them lost after JOBQ_HEARTBEAT_TIMEOUT_S (10 s, the default too)."""


async def test_k8s_node_kill_resumes_sklearn_training_from_its_newest_checkpoint(
        k8s_stack: Stack, k8s_client: JobqClient, cluster: DevCluster) -> None:
    # The kill comes 14 epochs in, more than one interval + detection (11 s) of work.
    epochs, epoch_s, kill_after = 20, 1.0, 14
    victim, others = NODE_NAMES[0], NODE_NAMES[1:]
    ckpt, nockpt, unbroken = tr.job_id("ckpt"), tr.job_id("nockpt"), tr.job_id("unbroken")
    client = k8s_client
    async with evidence.watch_pointer(client.js, ckpt) as log, \
            evidence.watch_pointer(client.js, nockpt) as log_none:
        for node in others:
            kubectl(cluster, "cordon", node)
        try:
            for job, checkpoint in ((ckpt, True), (nockpt, False)):
                args = tr.train_args(checkpoint=checkpoint, epochs=epochs, epoch_seconds=epoch_s)
                await client.submit(id=job, task=tr.SKLEARN_TASK, args=args,
                                    resources={"cpu": 0.5, "memory": "256Mi"})
            running = await wait_running(client, [ckpt, nockpt], count=2, timeout=120)
            assert {r.current.node for r in running if r.current} == {victim}
        finally:
            for node in others:
                kubectl(cluster, "uncordon", node)
        await wait_beating(client, [ckpt, nockpt])
        await tr.wait_checkpoints(client, ckpt, at_least=kill_after)
        await asyncio.sleep(tr.MID_EPOCH * epoch_s)  # the kill lands mid-epoch, not just after a save
        killed_at = contract.utcnow()
        cluster.kill(victim)  # machine death: the kubelet and its pods
        await tr.wait_attempts(client, ckpt, count=2, timeout=120)
        await client.submit(id=unbroken, task=tr.SKLEARN_TASK, resources={"cpu": 0.5, "memory": "256Mi"},
                            args=tr.train_args(checkpoint=True, epochs=epochs, epoch_seconds=epoch_s))
        records = await client.wait([ckpt, nockpt, unbroken], timeout=240)
    assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}, records
    for job in (ckpt, nockpt):
        attempts = records[job].attempts
        assert len(attempts) == 2 and attempts[0].node == victim and attempts[1].node in others, attempts
        assert attempts[0].reason is not None and attempts[0].reason.is_disruption, attempts[0]

    with_ckpt = tr.judge(records[ckpt], log, killed_at)
    without = tr.judge(records[nockpt], log_none, killed_at)
    tr.report("kubernetes", with_ckpt, without, detection_s=DETECTION_S)
    assert with_ckpt.saved_step is not None and with_ckpt.saved_step >= kill_after
    assert with_ckpt.resumed_step == with_ckpt.saved_step
    assert with_ckpt.redone == epochs - with_ckpt.saved_step, with_ckpt  # it really went on from there
    stamped = records[ckpt].attempts[1].checkpoints
    assert stamped is not None and stamped.resumed_step == with_ckpt.saved_step
    assert log.owners() == sorted(log.owners()) and log.owners()[-1] == 2
    assert with_ckpt.work_lost_s <= with_ckpt.bound(DETECTION_S), with_ckpt
    assert with_ckpt.dispatcher_work_lost_s is not None
    assert with_ckpt.dispatcher_work_lost_s <= with_ckpt.bound(DETECTION_S), with_ckpt
    assert without.resumed_step is None and not log_none.versions
    assert without.work_lost_s > with_ckpt.bound(DETECTION_S), without
    digests = {job: await tr.model_digest(client, job) for job in (ckpt, nockpt, unbroken)}
    assert digests[ckpt] == digests[unbroken] == digests[nockpt], digests
