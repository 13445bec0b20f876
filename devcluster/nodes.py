"""Simulated kubelets for the dev cluster: node identities, agent processes, their state file.

Each node agent (``python -m workers.kubelet``) authenticates with its own client certificate,
``CN=system:node:<name>, O=system:nodes``, so the Node authorizer and NodeRestriction admit it
exactly as they would a real kubelet, and serves ``kubectl logs`` over HTTPS with a serving
certificate from the cluster CA (SANs 127.0.0.1 and the node name). ``<state_dir>/kubelets.json``
records the agents (pid plus kernel start time) so ``jobq dev-cluster down``, ``jobq demo
--kill-node`` and the tests can find them from another process.

Pods outlive their agent, as containers outlive a real kubelet: each agent records its pods under
``<state_dir>/pods/<node>/pods/<uid>.json``. Hence two ways to break a node:

- ``kill_kubelet``: the agent only. Its Lease stops; its pods keep running, and a restarted agent
  (``restart_kubelet``) adopts them.
- ``kill_node``: machine death. The agent and every pod process group it started are SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from devcluster import procs
from devcluster.build import find_kubectl
from devcluster.kubeconfig import write_kubeconfig
from devcluster.pki import CertPair, Pki, issue_client_cert, issue_serving_cert
from devcluster.state import ClusterState
from workers import pod_runtime

STATE_FILE = "kubelets.json"

_REAPER = r"""
import glob, json, os, signal, sys
def reap(*_):
    for path in glob.glob(os.path.join(sys.argv[1], "*", "pods", "*.json")):
        try:
            with open(path) as f:
                rec = json.load(f)
            with open(f"/proc/{rec['pid']}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[19]) == rec["start_ticks"] and fields[0] != "Z":
                os.killpg(rec["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError, IndexError):
            pass
    sys.exit(0)
signal.signal(signal.SIGTERM, reap)
while True:
    signal.pause()
"""
"""Kills the recorded pods of a non-detached cluster when the thread that started it dies
(parent-death signal SIGTERM), even if that process gets no chance to run ``stop_all``."""
_reapers: dict[Path, subprocess.Popen[bytes]] = {}


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


def node_serving_cert(state_dir: Path, name: str) -> CertPair:
    """Issue the serving certificate of ``name``'s log API (SANs 127.0.0.1 and the node name)."""
    pki = Pki.at(state_dir / "pki")
    pair = CertPair(state_dir / "nodes" / f"{name}-serving.crt", state_dir / "nodes" / f"{name}-serving.key")
    pair.cert.parent.mkdir(parents=True, exist_ok=True)
    return issue_serving_cert(pki, pair, common_name=f"system:node:{name}", organizations=("system:nodes",),
                              dns_names=(name,), ips=("127.0.0.1",))


def work_dir(state_dir: Path) -> Path:
    """The agents' ``--work-dir``: pod logs in ``<node>/``, pod records in ``<node>/pods/``."""
    return state_dir.resolve() / "pods"


def pods_dir(state_dir: Path, name: str) -> Path:
    """Where the agent of ``name`` records the pods it runs (``workers.pod_runtime.PodRecord``)."""
    return work_dir(state_dir) / name / "pods"


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
                  env: Mapping[str, str] | None = None, kubelet_args: Sequence[str] = ()) -> KubeletState:
    """Start one agent (stock kubelet cadence unless ``kubelet_args`` say otherwise).

    ``detached=False``: the agent gets SIGKILL when the calling thread dies, and a reaper process
    (one per cluster) then kills the pods the agents recorded, since pods outlive their agent.
    """
    state_dir = state_dir.resolve()
    kubeconfig = node_kubeconfig(state_dir, node.name)
    serving = node_serving_cert(state_dir, node.name)
    log_path = state_dir / "logs" / f"kubelet-{node.name}.log"
    argv = [sys.executable, "-m", "workers.kubelet", "--name", node.name, "--kubeconfig", str(kubeconfig),
            "--cpu", str(node.cpu), "--memory", node.memory, "--gpu", str(node.gpu),
            "--work-dir", str(work_dir(state_dir)), "--tls-cert-file", str(serving.cert),
            "--tls-private-key-file", str(serving.key),
            "--client-ca-file", str(Pki.at(state_dir / "pki").ca.cert), *kubelet_args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if not detached:
        _ensure_reaper(state_dir)
    _, ref = procs.spawn(argv, log_path, env=full_env,
                         parent_death_signal=None if detached else signal.SIGKILL)
    entry = KubeletState(name=node.name, pid=ref.pid, start_time=ref.start_time,
                         kubeconfig=str(kubeconfig), log=str(log_path), argv=argv)
    kubelets = load(state_dir)
    kubelets[node.name] = entry
    _save(state_dir, kubelets)
    return entry


def _ensure_reaper(state_dir: Path) -> None:
    reaper = _reapers.get(state_dir)
    if reaper is not None and reaper.poll() is None:
        return
    _reapers[state_dir], _ = procs.spawn([sys.executable, "-c", _REAPER, str(work_dir(state_dir))],
                                         state_dir / "logs" / "pod-reaper.log",
                                         parent_death_signal=signal.SIGTERM)


def kill_kubelet(state_dir: Path, name: str, sig: signal.Signals = signal.SIGKILL) -> bool:
    """Signal the agent of node ``name`` only: with SIGKILL its Lease stops, but its pods keep
    running, as containers do when a real kubelet dies. False if it was not running."""
    entry = load(state_dir.resolve()).get(name)
    if entry is None or not entry.ref.alive():
        return False
    os.kill(entry.pid, sig)
    return True


def kill_node(state_dir: Path, name: str) -> bool:
    """Machine death of ``name``: SIGKILL its agent and every pod process group it started.

    The agent is frozen (SIGSTOP) first, so it cannot start or report anything meanwhile; its
    pods are found from its records and from its children (a pod started a moment ago may not be
    recorded yet). The node's boot id is dropped: a restarted agent is a rebooted machine. Returns
    whether the agent was running (its pods are killed either way).
    """
    state_dir = state_dir.resolve()
    entry = load(state_dir).get(name)
    groups: set[int] = set()
    was_alive = entry is not None and entry.ref.alive()
    if entry is not None and was_alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry.pid, signal.SIGSTOP)
            groups = _child_groups(entry.pid)
            os.kill(entry.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while entry.ref.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
    for pgid in groups:
        pod_runtime.signal_group(pgid, signal.SIGKILL)
    pod_runtime.kill_recorded(pods_dir(state_dir, name))
    (work_dir(state_dir) / name / "boot_id").unlink(missing_ok=True)
    return was_alive


def _child_groups(pid: int) -> set[int]:
    """Process groups led by children of ``pid`` (the pods it started; each leads a session)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            ppid, pgid = int(fields[1]), int(fields[2])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and pgid == int(entry.name):
            found.add(pgid)
    return found


def stop_all(state_dir: Path, *, timeout: float = 10.0) -> int:
    """SIGTERM every recorded agent (SIGKILL stragglers), then SIGKILL every pod any agent of this
    cluster recorded (pods outlive their agents); returns how many agents ran."""
    state_dir = state_dir.resolve()
    stopped = 0
    for entry in load(state_dir).values():
        if entry.ref.alive():
            stopped += 1
            procs.terminate(entry.ref, timeout=timeout)
    for directory in work_dir(state_dir).glob("*/pods"):
        pod_runtime.kill_recorded(directory)
    reaper = _reapers.pop(state_dir, None)
    if reaper is not None:
        reaper.kill()
        reaper.wait()
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
    """Start the agent of ``name`` again with its recorded argv (a fresh process, same node); it
    adopts the pods that survived its predecessor."""
    state_dir = state_dir.resolve()
    entry = load(state_dir).get(name)
    if entry is None:
        raise NodeError(f"no node agent {name} recorded in {state_dir}")
    if entry.ref.alive():
        return entry
    if not detached:
        _ensure_reaper(state_dir)
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
    from devcluster.controlplane import default_state_dir

    path = (kubeconfig or default_state_dir() / "kubeconfig").expanduser().resolve()
    if not path.is_file():
        raise NodeError(f"no kubeconfig at {path}; start a cluster with `jobq dev-cluster up` "
                        "or pass --kubeconfig")
    return {"JOBQ_BACKEND": "kubernetes", "JOBQ_KUBECONFIG": str(path)}
