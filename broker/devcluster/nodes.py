"""Simulated kubelets for the dev cluster: node identities, agent processes, their state file.

Each node agent (``python -m workers.kubelet``) authenticates with its own client certificate,
``CN=system:node:<name>, O=system:nodes``, so the Node authorizer and NodeRestriction admit it
exactly as they would a real kubelet. ``<state_dir>/kubelets.json`` records the agents (pid plus
kernel start time) so ``jobq dev-cluster down``, ``jobq demo --kill-node`` and the tests can find
them from another process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from broker.devcluster import procs
from broker.devcluster.build import find_kubectl
from broker.devcluster.kubeconfig import write_kubeconfig
from broker.devcluster.pki import CertPair, Pki, issue_client_cert
from broker.devcluster.state import ClusterState

STATE_FILE = "kubelets.json"


class NodeError(RuntimeError):
    """A node agent failed to start or to become Ready."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu: float = 4.0
    memory: str = "8Gi"
    gpu: int = 0


@dataclass(frozen=True)
class KubeletState:
    name: str
    pid: int
    start_time: int
    kubeconfig: str
    log: str
    argv: list[str]

    @property
    def ref(self) -> procs.ProcessRef:
        return procs.ProcessRef(self.pid, self.start_time)


def node_kubeconfig(state_dir: Path, name: str) -> Path:
    """Issue the node identity of ``name`` and write its kubeconfig; returns the path."""
    state = ClusterState.load(state_dir)
    if state is None:
        raise NodeError(f"no control plane recorded in {state_dir}")
    pki = Pki.at(state_dir / "pki")
    pair = CertPair(state_dir / "nodes" / f"{name}.crt", state_dir / "nodes" / f"{name}.key")
    pair.cert.parent.mkdir(parents=True, exist_ok=True)
    issue_client_cert(pki, pair, common_name=f"system:node:{name}", organizations=("system:nodes",))
    return write_kubeconfig(state_dir / "nodes" / f"{name}.kubeconfig", server=state.server,
                            ca_cert=pki.ca.cert, client=pair, user=f"system:node:{name}")


def load(state_dir: Path) -> dict[str, KubeletState]:
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {name: KubeletState(**entry) for name, entry in raw.items()}


def _save(state_dir: Path, kubelets: Mapping[str, KubeletState]) -> None:
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({n: asdict(k) for n, k in kubelets.items()}, indent=2) + "\n")
    os.replace(tmp, path)


def start_kubelet(state_dir: Path, node: NodeSpec, *, detached: bool = True,
                  env: Mapping[str, str] | None = None) -> KubeletState:
    """Start one agent. ``detached=False``: it gets SIGKILL when the calling thread dies."""
    state_dir = state_dir.resolve()
    kubeconfig = node_kubeconfig(state_dir, node.name)
    log_path = state_dir / "logs" / f"kubelet-{node.name}.log"
    argv = [sys.executable, "-m", "workers.kubelet", "--name", node.name, "--kubeconfig", str(kubeconfig),
            "--cpu", str(node.cpu), "--memory", node.memory, "--gpu", str(node.gpu),
            "--work-dir", str(state_dir / "pods")]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    _, ref = procs.spawn(argv, log_path, env=full_env,
                         parent_death_signal=None if detached else signal.SIGKILL)
    entry = KubeletState(name=node.name, pid=ref.pid, start_time=ref.start_time,
                         kubeconfig=str(kubeconfig), log=str(log_path), argv=argv)
    kubelets = load(state_dir)
    kubelets[node.name] = entry
    _save(state_dir, kubelets)
    return entry


def kill_kubelet(state_dir: Path, name: str, sig: signal.Signals = signal.SIGKILL) -> bool:
    """Signal the agent of node ``name`` (SIGKILL: the node dies with its pods)."""
    entry = load(state_dir.resolve()).get(name)
    if entry is None or not entry.ref.alive():
        return False
    os.kill(entry.pid, sig)
    return True


def stop_all(state_dir: Path, *, timeout: float = 10.0) -> int:
    """SIGTERM every recorded agent (pods are killed), SIGKILL stragglers; returns how many ran."""
    state_dir = state_dir.resolve()
    stopped = 0
    for entry in load(state_dir).values():
        if entry.ref.alive():
            stopped += 1
            procs.terminate(entry.ref, timeout=timeout)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def ready_nodes(state_dir: Path) -> dict[str, bool]:
    """Node name -> Ready condition is True, as ``kubectl get nodes`` shows it."""
    kubeconfig = state_dir.resolve() / "kubeconfig"
    out = subprocess.run([str(find_kubectl()), "--kubeconfig", str(kubeconfig), "get", "nodes", "-o", "json"],
                         capture_output=True, text=True, timeout=20, check=False)
    if out.returncode != 0:
        return {}
    ready: dict[str, bool] = {}
    for item in json.loads(out.stdout).get("items", []):
        conds = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
        ready[item["metadata"]["name"]] = conds.get("Ready") == "True"
    return ready


def wait_ready(state_dir: Path, names: list[str], *, timeout_s: float = 60.0) -> None:
    """Wait until every node in ``names`` is Ready; raises NodeError naming the laggards."""
    deadline = time.monotonic() + timeout_s
    kubelets = load(state_dir.resolve())
    while True:
        ready = ready_nodes(state_dir)
        missing = [n for n in names if not ready.get(n)]
        if not missing:
            return
        for name in missing:
            entry = kubelets.get(name)
            if entry is not None and not entry.ref.alive():
                raise NodeError(f"node agent {name} exited; last lines of {entry.log}:\n"
                                f"{procs.tail(Path(entry.log))}")
        if time.monotonic() > deadline:
            raise NodeError(f"nodes not Ready after {timeout_s:.0f}s: {missing}")
        time.sleep(0.3)


def restart_kubelet(state_dir: Path, name: str, *, detached: bool = True) -> KubeletState:
    """Start the agent of ``name`` again with its recorded argv (a fresh process, same node)."""
    state_dir = state_dir.resolve()
    entry = load(state_dir).get(name)
    if entry is None:
        raise NodeError(f"no node agent {name} recorded in {state_dir}")
    if entry.ref.alive():
        return entry
    _, ref = procs.spawn(entry.argv, Path(entry.log), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                         parent_death_signal=None if detached else signal.SIGKILL)
    fresh = KubeletState(name=name, pid=ref.pid, start_time=ref.start_time, kubeconfig=entry.kubeconfig,
                         log=entry.log, argv=entry.argv)
    kubelets = load(state_dir)
    kubelets[name] = fresh
    _save(state_dir, kubelets)
    return fresh


def stack_env(kubeconfig: Path | None) -> dict[str, str]:
    """JOBQ_* settings that put a jobq stack's dispatchers on the Kubernetes backend.

    ``kubeconfig`` defaults to the dev cluster's (``jobq dev-cluster kubeconfig``).
    """
    from broker.devcluster.controlplane import default_state_dir

    path = (kubeconfig or default_state_dir() / "kubeconfig").expanduser().resolve()
    if not path.is_file():
        raise NodeError(f"no kubeconfig at {path}; start a cluster with `jobq dev-cluster up` "
                        "or pass --kubeconfig")
    return {"JOBQ_BACKEND": "kubernetes", "JOBQ_KUBECONFIG": str(path)}
