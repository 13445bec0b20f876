"""One real control plane per test session, shared by tests/k8s and tests/contract.

Started lazily by ``shared_cluster()`` with upstream defaults: stock controller settings
(``ControlPlaneConfig()``: grace 50 s, tolerations 300 s) and stock kubelet cadence (Lease renewed
every 10 s, status posted on change or every 5 min). Components and kubelet agents die with the
test process (parent-death signal); pods outlive their agents, so they are killed at exit by
``nodes.stop_all`` or, if the process dies without running it, by the cluster's pod reaper.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devcluster import nodes
from devcluster.build import BuildError, ensure_binaries
from devcluster.controlplane import ControlPlane, ControlPlaneConfig

NODE_NAMES = ("k8s-node-1", "k8s-node-2", "k8s-node-3")
NODE_CPU = 4.0


def _say(line: str) -> None:
    stream = sys.__stderr__ or sys.stderr  # the real stderr, past pytest's capture
    stream.write(f"[k8s] {line}\n")
    stream.flush()


@dataclass
class DevCluster:
    plane: ControlPlane
    state_dir: Path
    startup_s: float
    build_s: float
    killed: set[str] = field(default_factory=set)

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    def start_node(self, name: str) -> None:
        nodes.start_kubelet(self.state_dir, nodes.NodeSpec(name, cpu=NODE_CPU, memory="8Gi"), detached=False)

    def kill(self, name: str) -> None:
        """Machine death: SIGKILL the node agent and every pod it started."""
        assert nodes.kill_node(self.state_dir, name), f"{name} was not running"
        self.killed.add(name)

    def kill_kubelet(self, name: str) -> None:
        """SIGKILL the node agent only: its Lease stops, its pods keep running."""
        assert nodes.kill_kubelet(self.state_dir, name, signal.SIGKILL), f"{name} was not running"
        self.killed.add(name)

    def heal(self) -> None:
        """Restart killed agents (they adopt surviving pods) and wait until every node is Ready."""
        running = nodes.load(self.state_dir)
        for name in NODE_NAMES:
            entry = running.get(name)
            if entry is None or not entry.ref.alive():
                self.start_node(name)
        self.killed.clear()
        nodes.wait_ready(self.state_dir, list(NODE_NAMES), timeout_s=60)

    def stop(self) -> None:
        nodes.stop_all(self.state_dir, timeout=5)
        self.plane.stop()


_cluster: DevCluster | None = None


def shared_cluster() -> DevCluster:
    """The session's cluster (built and started on first use), or a skip/fail when Go is missing."""
    global _cluster
    if _cluster is not None:
        return _cluster
    started = time.monotonic()
    try:
        ensure_binaries(progress=_say)
    except BuildError as exc:
        message = f"Kubernetes tests need the Go-built control plane: {str(exc).splitlines()[0]}"
        if os.environ.get("JOBQ_REQUIRE_K8S") == "1":
            pytest.fail(message + " (JOBQ_REQUIRE_K8S=1)", pytrace=False)
        pytest.skip(message)
    build_s = time.monotonic() - started
    state_dir = Path(tempfile.mkdtemp(prefix="jobq-k8s-"))
    plane = ControlPlane(ControlPlaneConfig(state_dir=state_dir, detached=False), progress=_say)
    plane.start()
    cluster = DevCluster(plane=plane, state_dir=state_dir, startup_s=0.0, build_s=build_s)
    for name in NODE_NAMES:
        cluster.start_node(name)
    nodes.wait_ready(state_dir, list(NODE_NAMES), timeout_s=90)
    cluster.startup_s = time.monotonic() - started - build_s
    _say(
        f"control plane + {len(NODE_NAMES)} kubelet agents Ready in {cluster.startup_s:.1f}s "
        f"(binaries located in {build_s:.1f}s); state in {state_dir}"
    )
    atexit.register(cluster.stop)
    _cluster = cluster
    return cluster


def k8s_env(cluster: DevCluster, namespace: str) -> dict[str, str]:
    # Heartbeat and node-loss settings stay at their defaults: slow first heartbeats of pods
    # importing scikit-learn on two shared cores are covered by the 60 s startup allowance.
    return {
        "JOBQ_BACKEND": "kubernetes",
        "JOBQ_KUBECONFIG": str(cluster.kubeconfig),
        "JOBQ_NAMESPACE": namespace,
    }
