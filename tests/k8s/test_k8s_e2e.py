"""The jobq stack on a real Kubernetes control plane: jobs run as Pods bound by the real
scheduler to nodes simulated by our kubelet agents; a SIGKILLed agent is a node death."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import time

import pytest

from broker import contract
from broker.embedded.stack import Stack
from devcluster.build import find_kubectl
from submitter.client import JobqClient
from tests.integration.helpers import success_events, wait_running
from tests.k8s.cluster import NODE_NAMES, DevCluster

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]


def kubectl(cluster: DevCluster, *args: str) -> str:
    out = subprocess.run([str(find_kubectl()), "--kubeconfig", str(cluster.kubeconfig), *args],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def node_ready(cluster: DevCluster, name: str) -> tuple[str, dt.datetime | None]:
    node = json.loads(kubectl(cluster, "get", "node", name, "-o", "json"))
    cond = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    since = cond.get("lastTransitionTime")
    return cond["status"], dt.datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None


async def assert_exactly_once(client: JobqClient, ids: list[str], *,
                              timeout: float) -> dict[str, contract.JobRecord]:
    records = await client.wait(ids, timeout=timeout)
    assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}, {
        i: (r.phase, r.message) for i, r in records.items()}
    for job_id in ids:
        assert await success_events(client, job_id) == 1, job_id
        assert records[job_id].app_failures == 0, records[job_id].attempts
    return records


async def test_jobs_run_as_pods_on_kubernetes(k8s_stack: Stack, k8s_client: JobqClient, cluster: DevCluster,
                                              namespace: str) -> None:
    specs = [{"task": "demo.sleep", "args": {"seconds": 1 + i % 3}} for i in range(6)]
    specs += [{"task": "sklearn.train", "args": {"dataset": d, "model": "logreg"}}
              for d in ("iris", "wine", "digits", "breast_cancer")]
    started = time.monotonic()
    ids = [(await k8s_client.submit(spec)).id for spec in specs]
    records = await assert_exactly_once(k8s_client, ids, timeout=240)
    elapsed = time.monotonic() - started
    nodes_used = {a.node for r in records.values() for a in r.attempts}
    assert nodes_used <= set(NODE_NAMES), nodes_used
    assert len(nodes_used) >= 2, f"the scheduler spread nothing: {nodes_used}"
    for record in records.values():
        assert len(record.attempts) == 1, record.attempts
        result = await k8s_client.result_of(record)
        assert result.node in NODE_NAMES
        if record.spec.task == "sklearn.train":
            assert result.output, record.spec.id
    # Finished pods are cleaned up by the dispatcher.
    deadline = time.monotonic() + 30
    while json.loads(kubectl(cluster, "get", "pods", "-n", namespace, "-o", "json"))["items"]:
        assert time.monotonic() < deadline, kubectl(cluster, "get", "pods", "-n", namespace)
        await asyncio.sleep(0.5)
    print(f"10 jobs on Kubernetes in {elapsed:.1f}s")


# Node kills (machine death, kubelet death, no fault at stock cadence) are in test_k8s_node_loss.py.


async def test_memory_limit_and_external_delete(k8s_stack: Stack, k8s_client: JobqClient, cluster: DevCluster,
                                                namespace: str) -> None:
    """The kubelet enforces limits.memory (OOMKilled); a pod deleted by someone else (graceful
    deletion: SIGTERM, final status, DELETE by the kubelet) is a disruption that jobq retries."""
    hog = await k8s_client.submit(task="demo.hog", args={"mb": 600, "seconds": 5},
                                  resources={"cpu": 0.2, "memory": "256Mi"}, retry={"max_attempts": 1})
    sleeper = await k8s_client.submit(task="demo.sleep", args={"seconds": 6})
    [running] = await wait_running(k8s_client, [sleeper.id], count=1, timeout=120)
    assert running.current is not None
    kubectl(cluster, "delete", "pod", "-n", namespace, running.current.pod, "--wait=false")
    records = await k8s_client.wait([hog.id, sleeper.id], timeout=180)
    oom = records[hog.id]
    assert oom.phase == contract.JobPhase.DEAD and oom.reason == contract.FailureReason.OOM, oom
    assert oom.attempts[-1].exit_code == 137
    moved = records[sleeper.id]
    assert moved.phase == contract.JobPhase.SUCCEEDED, moved
    assert moved.attempts[0].reason == contract.FailureReason.DELETED, moved.attempts
    assert moved.app_failures == 0 and len(moved.attempts) == 2


async def test_unplaceable_pod_says_why(k8s_stack: Stack, k8s_client: JobqClient) -> None:
    """A job no node could ever hold stays queued saying so; one that fits a node but finds no room
    gets a Pending pod, and the scheduler's FailedScheduling message reaches the attempt."""
    never = await k8s_client.submit(task="demo.sleep", args={"seconds": 1}, resources={"cpu": 64})
    fill = [await k8s_client.submit(task="demo.sleep", args={"seconds": 30}, resources={"cpu": 3.5})
            for _ in NODE_NAMES]
    await wait_running(k8s_client, [h.id for h in fill], count=len(fill), timeout=120)
    later = await k8s_client.submit(task="demo.sleep", args={"seconds": 1}, resources={"cpu": 3.5})
    deadline = time.monotonic() + 60
    while True:
        big, pending = await k8s_client.get(never.id), await k8s_client.get(later.id)
        if (big is not None and big.waiting_reason and pending is not None and pending.current is not None
                and pending.current.waiting_reason):
            break
        assert time.monotonic() < deadline, (big, pending)
        await asyncio.sleep(0.5)
    assert big.phase == contract.JobPhase.QUEUED and big.attempts == ()
    assert big.waiting_reason == "unschedulable: needs 64 CPU; largest Ready node offers 4", big
    why = pending.current.waiting_reason
    assert "Unschedulable" in why and "Insufficient cpu" in why, why
    for handle in (never, later, *fill):
        await k8s_client.cancel(handle.id)
    final = await k8s_client.wait([h.id for h in (never, later, *fill)], timeout=60)
    assert {r.phase for r in final.values()} == {contract.JobPhase.CANCELLED}
