"""Chaos Toolkit actions for the Kubernetes backend: kill a node (machine death: our simulated
kubelet and its pods) or only its kubelet process, restart the kubelet, cordon, drain or delete a
Node.

The cluster is found from the experiment's configuration: ``kubeconfig`` (JOBQ_KUBECONFIG,
default: the dev cluster's, ``jobq dev-cluster kubeconfig``), ``namespace`` (JOBQ_NAMESPACE, the
jobs namespace, default ``jobq-jobs``) and ``cluster_dir`` (the dev cluster's state directory with
``kubelets.json``; default: the kubeconfig's directory). Node agents are signalled through
``devcluster.nodes``; API calls go through kubectl. Every disruption is recorded in the
run's state file like chaos.node_actions does, so the probes (recovery time, lost jobs) and the report
work unchanged. chaostoolkit-kubernetes is deliberately not used (docs/chaos.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed

from broker import contract
from broker.backends import k8s_objects
from chaos import burst, target
from chaos.target import ChaosError, Configuration, RunState
from devcluster import nodes
from devcluster.build import find_kubectl
from submitter.client import JobqClient

__all__ = [
    "cordon_node",
    "delete_node",
    "drain_node",
    "kill_kubelet",
    "kill_kubelet_process",
    "restart_kubelet",
    "uncordon_node",
]

JOBQ_PODS = f"{k8s_objects.LABEL_MANAGED}={k8s_objects.MANAGED_BY}"
CORDON_KINDS = ("node_cordon", "node_drain")
KILL_KINDS = ("node_kill", "kubelet_kill")


# --- the cluster --------------------------------------------------------------------------


def kubeconfig(configuration: Configuration) -> Path:
    value = str((configuration or {}).get("kubeconfig") or "")
    if value and not value.startswith("${"):
        return Path(value).expanduser().resolve()
    try:
        return Path(nodes.stack_env(None)["JOBQ_KUBECONFIG"])
    except nodes.NodeError as exc:
        raise ChaosError(str(exc)) from exc


def cluster_dir(configuration: Configuration) -> Path:
    value = str((configuration or {}).get("cluster_dir") or "")
    return Path(value).resolve() if value and not value.startswith("${") else kubeconfig(configuration).parent


def namespace(configuration: Configuration) -> str:
    value = str((configuration or {}).get("namespace") or "")
    return value if value and not value.startswith("${") else "jobq-jobs"


def kubectl(configuration: Configuration, *args: str, timeout_s: float = 30.0) -> str:
    out = subprocess.run(
        [str(find_kubectl()), "--kubeconfig", str(kubeconfig(configuration)), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if out.returncode != 0:
        raise ChaosError(f"kubectl {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def pods_on(configuration: Configuration, node: str) -> list[dict[str, Any]]:
    """jobq's pods bound to ``node`` in the jobs namespace."""
    raw = kubectl(
        configuration,
        "get", "pods", "-n", namespace(configuration), "-l", JOBQ_PODS,
        "--field-selector", f"spec.nodeName={node}", "-o", "json",
    )  # fmt: skip
    items: list[dict[str, Any]] = json.loads(raw).get("items", [])
    return items


def _pod_refs(pods: list[dict[str, Any]]) -> list[str]:
    refs = []
    for pod in pods:
        labels = pod["metadata"].get("labels", {})
        refs.append(f"{labels.get(k8s_objects.LABEL_JOB, '?')}#{labels.get(k8s_objects.LABEL_ATTEMPT, '?')}")
    return sorted(refs)


def _live_agents(configuration: Configuration) -> list[str]:
    return sorted(n for n, k in nodes.load(cluster_dir(configuration)).items() if k.ref.alive())


def _victim(configuration: Configuration, name: str, *, min_running: int, timeout_s: float) -> str:
    """``name``, or with ``busiest`` the live node running the most burst jobs."""
    if name != "busiest":
        return name
    state = RunState.load(configuration)

    async def go(client: JobqClient) -> Counter[str]:
        return await burst.running_on_nodes(
            client, state.burst, at_least=min_running, timeout_s=timeout_s, ledger=state.ledger
        )

    by_node = target.run_async(lambda: target.with_client(configuration, go))
    return burst.choose_victims(_live_agents(configuration), by_node, count=1, names=None, pick="busiest")[0]


def _wait_moved(configuration: Configuration, pods: list[str], *, timeout_s: float) -> bool:
    """Wait until every job whose attempt is in ``pods`` runs a later attempt or has finished."""
    wanted = [ref.rpartition("#") for ref in pods]

    async def go(client: JobqClient) -> bool:
        async def moved() -> bool:
            for job_id, _, attempt in wanted:
                record = await client.get(job_id)
                if record is None:
                    return False
                if record.phase.is_terminal:
                    continue
                current = record.current
                if len(record.attempts) <= int(attempt) or current is None:
                    return False
                if current.state != contract.AttemptState.RUNNING:
                    return False
            return True

        return await target.poll(moved, timeout_s=timeout_s, interval_s=0.2)

    return target.run_async(lambda: target.with_client(configuration, go))


# --- node agents --------------------------------------------------------------------------


def kill_kubelet(
    name: str = "busiest",
    min_running: int = 3,
    timeout_s: float = 60.0,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """Machine death of ``name`` (or of the ``busiest`` node: most running burst jobs): SIGKILL of
    its node agent and of every pod the agent started. Its Lease stops; the node lifecycle
    controller marks it NotReady after its grace period (stock: 50 s)."""
    return _kill(name, min_running, timeout_s, configuration, machine=True)


def kill_kubelet_process(
    name: str = "busiest",
    min_running: int = 3,
    timeout_s: float = 60.0,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """SIGKILL only the kubelet process of ``name``: its pods keep running (as containers outlive
    a real kubelet) while its Lease stops. ``restart_kubelet`` brings it back; it adopts them.
    Recorded as ``kubelet_kill``, recovered when the kubelet is back."""
    return _kill(name, min_running, timeout_s, configuration, machine=False)


def _kill(name: str, min_running: int, timeout_s: float, configuration: Configuration, *,
          machine: bool) -> dict[str, Any]:
    directory = cluster_dir(configuration)
    try:
        victim = _victim(configuration, name, min_running=min_running, timeout_s=timeout_s)
        entry = nodes.load(directory).get(victim)
        pods = _pod_refs(pods_on(configuration, victim))
        at = target.now_iso()
        if entry is None:
            raise ChaosError(f"no node agent {victim} recorded in {directory}")
        if machine:
            killed = nodes.kill_node(directory, victim)
        else:
            killed = nodes.kill_kubelet(directory, victim, signal.SIGKILL)
        if not killed:
            raise ChaosError(f"no live node agent {victim} in {directory}")
    except ChaosError as exc:
        raise ActivityFailed(str(exc)) from exc
    disruption = {
        "kind": "node_kill" if machine else "kubelet_kill",
        "target": victim,
        "pid": entry.pid,
        "signal": "SIGKILL",
        "at": at,
        "pods": pods,
    }
    target.record_disruption(configuration, disruption)
    return disruption


def restart_kubelet(
    name: str | None = None, timeout_s: float = 60.0, configuration: Configuration = None
) -> dict[str, Any]:
    """Start again ``name`` (default: every agent killed in this run) and wait until Ready. A
    kubelet whose pods survived adopts them."""
    state = RunState.load(configuration)
    killed = sorted({d["target"] for d in state.disruptions if d["kind"] in KILL_KINDS})
    wanted = [name] if name else killed
    directory = cluster_dir(configuration)
    restarted = {}
    try:
        for node in wanted:
            entry = nodes.load(directory).get(node)
            if entry is None or not entry.ref.alive():
                restarted[node] = nodes.restart_kubelet(directory, node).pid
        if wanted:
            nodes.wait_ready(directory, wanted, timeout_s=timeout_s)
    except nodes.NodeError as exc:
        raise ActivityFailed(str(exc)) from exc
    at = target.now_iso()
    for i, d in enumerate(state.disruptions):
        if d["kind"] in KILL_KINDS and d["target"] in restarted and "restarted_at" not in d:
            extra = {"recovered_at": at} if d["kind"] == "kubelet_kill" else {}
            target.update_disruption(configuration, i, restarted_at=at, **extra)
    return {"restarted": restarted, "ready": wanted, "at": at}


# --- Node objects -------------------------------------------------------------------------


def cordon_node(
    name: str = "busiest", min_running: int = 1, timeout_s: float = 60.0, configuration: Configuration = None
) -> dict[str, Any]:
    """Mark the node unschedulable; running pods stay."""
    try:
        victim = _victim(configuration, name, min_running=min_running, timeout_s=timeout_s)
        at = target.now_iso()
        kubectl(configuration, "cordon", victim)
    except ChaosError as exc:
        raise ActivityFailed(str(exc)) from exc
    disruption = {"kind": "node_cordon", "target": victim, "at": at, "recovered_at": at}
    target.record_disruption(configuration, disruption)
    return disruption


def uncordon_node(name: str | None = None, configuration: Configuration = None) -> dict[str, Any]:
    """Make ``name`` (default: every node cordoned or drained in this run) schedulable again."""
    state = RunState.load(configuration)
    wanted = [name] if name else sorted({d["target"] for d in state.disruptions if d["kind"] in CORDON_KINDS})
    try:
        for node in wanted:
            kubectl(configuration, "uncordon", node)
    except ChaosError as exc:
        raise ActivityFailed(str(exc)) from exc
    return {"uncordoned": wanted, "at": target.now_iso()}


def drain_node(
    name: str = "busiest",
    eviction: bool = True,
    min_running: int = 3,
    timeout_s: float = 60.0,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """Cordon the node and remove jobq's pods from it: through the Eviction API (``eviction``),
    falling back to plain deletion when evictions are refused. Recovered when every affected job
    runs a replacement attempt elsewhere (or has finished)."""
    try:
        victim = _victim(configuration, name, min_running=min_running, timeout_s=timeout_s)
        pods = _pod_refs(pods_on(configuration, victim))
        at = target.now_iso()
        started = time.monotonic()
        args = [
            "drain",
            victim,
            "--force",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--pod-selector",
            JOBQ_PODS,
            f"--timeout={int(timeout_s)}s",
        ]
        method = "eviction"
        if eviction:
            try:
                kubectl(configuration, *args, timeout_s=timeout_s + 10)
            except ChaosError:
                method = "delete"
        else:
            method = "delete"
        if method == "delete":
            kubectl(configuration, *args, "--disable-eviction", timeout_s=timeout_s + 10)
    except ChaosError as exc:
        raise ActivityFailed(str(exc)) from exc
    disruption = {"kind": "node_drain", "target": victim, "at": at, "pods": pods, "method": method}
    index = target.record_disruption(configuration, disruption)
    moved = _wait_moved(configuration, pods, timeout_s=timeout_s)
    if moved:
        target.update_disruption(configuration, index, recovered_at=target.now_iso())
    return {**disruption, "moved": moved, "seconds": round(time.monotonic() - started, 2)}


def delete_node(
    name: str = "busiest", min_running: int = 1, timeout_s: float = 60.0, configuration: Configuration = None
) -> dict[str, Any]:
    """Delete the Node object (its agent keeps running); pods bound to it are garbage-collected.
    Recovered when every affected job runs elsewhere (or has finished)."""
    try:
        victim = _victim(configuration, name, min_running=min_running, timeout_s=timeout_s)
        pods = _pod_refs(pods_on(configuration, victim))
        at = target.now_iso()
        kubectl(configuration, "delete", "node", victim, "--wait=false")
    except ChaosError as exc:
        raise ActivityFailed(str(exc)) from exc
    disruption = {"kind": "node_delete", "target": victim, "at": at, "pods": pods}
    index = target.record_disruption(configuration, disruption)
    moved = _wait_moved(configuration, pods, timeout_s=timeout_s)
    if moved:
        target.update_disruption(configuration, index, recovered_at=target.now_iso())
    return {**disruption, "moved": moved}
