"""Side-by-side: how long until a job's work runs again after its node dies, on a real control
plane with simulated kubelets. Not a test; prints a table.

For each cluster configuration (``stock``: upstream defaults for node failure handling;
``fast``: the dev/test cluster's settings) it runs one long task twice, once as a ``batch/v1``
Job and once as a jobq job (Kubernetes backend), SIGKILLs the kubelet agent of the node running
it, and measures the time from the kill until a replacement pod is Running elsewhere.

    .venv/bin/python -m bench.k8s_recovery            # both configurations (~8 min: stock waits 300 s)
    .venv/bin/python -m bench.k8s_recovery --only fast
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.devcluster import nodes
from broker.devcluster.build import ensure_binaries, find_kubectl
from broker.devcluster.controlplane import ControlPlane, ControlPlaneConfig
from broker.embedded.stack import Stack, StackConfig
from submitter.client import JobqClient

NODES = ("bench-1", "bench-2", "bench-3")
CONFIGS = {
    # Upstream defaults: node-monitor-period 5s, grace 50s (v1.32+), eviction 0.1/s, tolerations 300s.
    "stock": ControlPlaneConfig(node_monitor_period="5s", node_monitor_grace_period="50s",
                                node_startup_grace_period="60s", node_eviction_rate=0.1,
                                toleration_seconds=300,
                                detached=False),
    "fast": ControlPlaneConfig(detached=False),  # 1s / 5s / 10/s / 2s, as in tests and `jobq dev-cluster up`
}


def say(line: str) -> None:
    print(f"[bench] {line}", file=sys.stderr, flush=True)


@dataclass
class Cluster:
    plane: ControlPlane
    state_dir: Path

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([str(find_kubectl()), "--kubeconfig", str(self.plane.kubeconfig), *args],
                             input=stdin, capture_output=True, text=True, timeout=30, check=True)
        return out.stdout

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))["items"]
        return items

    def heal(self) -> None:
        for name in NODES:
            if not nodes.load(self.state_dir)[name].ref.alive():
                nodes.restart_kubelet(self.state_dir, name, detached=False)
        nodes.wait_ready(self.state_dir, list(NODES), timeout_s=90)


def running(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if p.get("status", {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def wait_until(check: Any, *, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


def kill_and_time(cluster: Cluster, namespace: str, selector: str, *, timeout: float) -> tuple[float, str]:
    """SIGKILL the node of the running pod; seconds until another pod of ``selector`` is Running."""
    [pod] = wait_until(lambda: running(cluster.pods(namespace, selector)), timeout=120,
                       what="first pod running")
    node, first = pod["spec"]["nodeName"], pod["metadata"]["name"]
    killed = time.monotonic()
    nodes.kill_kubelet(cluster.state_dir, node, signal.SIGKILL)
    say(f"killed {node} running {first}; waiting up to {timeout:.0f}s for a replacement")
    wait_until(lambda: [p for p in running(cluster.pods(namespace, selector))
                        if p["metadata"]["name"] != first],
               timeout=timeout, what="replacement running")
    return time.monotonic() - killed, node


def run_batch_job(cluster: Cluster, *, timeout: float) -> float:
    namespace = "bench-job"
    cluster.kubectl("create", "namespace", namespace)
    wait_until(lambda: "default" in cluster.kubectl("get", "sa", "-n", namespace), timeout=30,
               what="service account")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "sleeper", "namespace": namespace},
           "spec": {"backoffLimit": 6, "template": {"spec": {
               "restartPolicy": "Never", "terminationGracePeriodSeconds": 10,
               "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "900"]}]}}}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    seconds, _ = kill_and_time(cluster, namespace, "job-name=sleeper", timeout=timeout)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    return seconds


async def run_jobq(cluster: Cluster, work: Path, *, timeout: float) -> float:
    namespace = "bench-jobq"
    env = {"JOBQ_BACKEND": "kubernetes", "JOBQ_KUBECONFIG": str(cluster.plane.kubeconfig),
           "JOBQ_NAMESPACE": namespace, "JOBQ_NODE_TIMEOUT_S": "3"}
    stack = Stack(StackConfig(data_dir=work / f"stack-{time.monotonic_ns()}", nodes=0, nats_port=-1,
                              http_port=0,
                              env=env), progress=say)
    await stack.start()
    try:
        async with JobqClient(stack.nats_url) as client:
            handle = await client.submit(task="demo.sleep", args={"seconds": 900})
            seconds, _ = await asyncio.to_thread(
                kill_and_time, cluster, namespace, f"jobq.dev/job-id={handle.id}", timeout=timeout)
            await client.cancel(handle.id)
    finally:
        await stack.stop()
    return seconds


def bench(name: str, config: ControlPlaneConfig, work: Path) -> dict[str, float]:
    state_dir = work / name
    plane = ControlPlane(ControlPlaneConfig(**{**config.__dict__, "state_dir": state_dir}), progress=say)
    started = time.monotonic()
    plane.start()
    cluster = Cluster(plane, state_dir)
    try:
        for node in NODES:
            nodes.start_kubelet(state_dir, nodes.NodeSpec(node), detached=False)
        nodes.wait_ready(state_dir, list(NODES), timeout_s=90)
        say(f"{name}: cluster with {len(NODES)} nodes Ready in {time.monotonic() - started:.1f}s")
        results = {"batch/v1 Job": run_batch_job(cluster, timeout=900)}
        say(f"{name}: Job replacement running after {results['batch/v1 Job']:.1f}s")
        cluster.heal()
        results["jobq"] = asyncio.run(run_jobq(cluster, work, timeout=120))
        say(f"{name}: jobq replacement running after {results['jobq']:.1f}s")
        return results
    finally:
        nodes.stop_all(state_dir, timeout=3)
        plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    args = parser.parse_args()
    ensure_binaries(progress=say)
    work = Path(tempfile.mkdtemp(prefix="jobq-bench-"))
    table = {name: bench(name, CONFIGS[name], work) for name in (args.only or ["fast", "stock"])}
    print("\nkill -> replacement pod Running (s), one run each, 3 simulated nodes, 2 shared cores")
    print(f"{'cluster settings':<44} {'batch/v1 Job':>13} {'jobq':>7}")
    for name, res in table.items():
        cfg = CONFIGS[name]
        label = (f"{name} (grace {cfg.node_monitor_grace_period}, tolerations {cfg.toleration_seconds}s)")
        print(f"{label:<44} {res['batch/v1 Job']:>13.1f} {res['jobq']:>7.1f}")


if __name__ == "__main__":
    main()
