"""Node death on a real control plane: how long until each workload runs again elsewhere.

Every row runs on a fresh control plane with ten simulated kubelets at the stock kubelet cadence
(Lease 40 s, renewed every 10 s; started 1 s apart, so the renewals are spread). Each row starts
five workloads that request 3 of a node's 4 CPUs, so each lands on its own node and five empty
nodes are left to take the replacements; every node is its own topology zone, so the node
lifecycle controller keeps evicting while five of the ten are down. Then it kills the five busy
machines at once (``broker.devcluster.nodes.kill_node``: the kubelet *and* its pod processes are
SIGKILLed) and measures, per workload, the seconds from its node's kill until a replacement pod of
that workload is Running on another node.

Rows (``--only``; repeatable):

- ``job-stock``: a ``batch/v1`` Job per workload; control plane on upstream defaults
  (node-monitor-period 5 s, grace 50 s, eviction 0.1/s, default tolerations 300 s). ~6 min.
- ``job-fast``: the same with ``ControlPlaneConfig.fastest_safe()`` (grace 20 s, period 1 s,
  tolerations 1 s, eviction 10/s), plus ``tolerationSeconds: 1`` for the ``unreachable`` and
  ``not-ready`` taints in the Job's pod template.
- ``jobq``: jobq jobs (task ``demo.sleep``) through a jobq stack (NATS + one dispatcher,
  ``JOBQ_BACKEND=kubernetes``, jobq's default settings) on the stock control plane.
- ``jobq-busy``: as ``jobq``, plus one small jobq job (0.5 CPU) on each spare node before the
  kill. jobq calls a node dead from its attempts' heartbeats (5 s) only while attempts on *other*
  nodes still beat (docs/design/node-loss.md); in ``jobq`` every beating node dies at once, so
  the per-attempt heartbeat timeout (10 s) or the Lease (40 s) decides. This row is the common
  case, a cluster with other work on the survivors.

The table also counts replacement pods the scheduler bound to *another* killed node (a dead node
still looks Ready to the scheduler until the node lifecycle controller taints it); such a pod
never runs, and the workload waits for the next replacement.

"Running" is what a watch on the API server delivers: the pod's phase is Running, it has no
deletionTimestamp and its node is not one of the killed ones; the time is when the bench received
that event (wall clock, the same clock the kill was stamped with). The container's ``startedAt``
(whole seconds, written by the kubelet) is reported alongside in ``--json``.

    .venv/bin/python -m bench.k8s_recovery                  # every row, ~10 min
    .venv/bin/python -m bench.k8s_recovery --only job-fast --only jobq --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.devcluster import nodes, probe
from broker.devcluster.build import ensure_binaries, find_kubectl
from broker.devcluster.controlplane import ControlPlane, ControlPlaneConfig
from broker.embedded.stack import Stack, StackConfig
from submitter.client import JobqClient

NODE_COUNT = 10
NODE_CPU = 4.0
NODE_MEMORY = "8Gi"
WORKLOADS = 5
WORKLOAD_CPU = 3.0
WORKLOAD_MEMORY = "256Mi"
WORKLOAD_SECONDS = 1800
"""How long a workload runs: far longer than any measurement (and bounded if a run leaks it)."""
BYSTANDER_CPU = 0.5
SETTLE_S = 5.0
"""Every row waits this long between "all workloads Running" and the kill."""
JOB_NAMESPACE = "bench"
JOBQ_NAMESPACE = "bench-jobq"
JOB_LABEL = "job-name"
JOBQ_LABEL = "jobq.dev/job-id"
KUBELET_CADENCE = "kubelet Lease 40 s renewed every 10 s"
KUBELET_STAGGER_S = 10.0 / NODE_COUNT
"""Kubelets start this far apart, spreading their Lease renewals over the 10 s interval."""
STOCK = ControlPlaneConfig(detached=False)
FAST = ControlPlaneConfig.fastest_safe(detached=False)


def plane_settings(cfg: ControlPlaneConfig) -> str:
    return (f"node-monitor-grace-period {cfg.node_monitor_grace_period}, node-monitor-period "
            f"{cfg.node_monitor_period}, default tolerations {cfg.toleration_seconds} s, "
            f"eviction {cfg.node_eviction_rate:g}/s")


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    title: str
    kind: str
    """``job`` or ``jobq``."""
    plane: ControlPlaneConfig
    settings: str
    pod_toleration_s: int | None = None
    """Job rows: tolerationSeconds for the unreachable/not-ready taints in the pod template."""
    bystanders: bool = False
    timeout_s: float = 300.0
    """Give up waiting for the replacements after this long."""


ROWS = {row.key: row for row in (
    Row("job-stock", "Job, stock controller", "job", STOCK, plane_settings(STOCK), timeout_s=900),
    Row("job-fast", "Job, fastest operator settings", "job", FAST,
        f"`ControlPlaneConfig.fastest_safe()`: {plane_settings(FAST)}; pod tolerations 1 s",
        pod_toleration_s=1),
    Row("jobq", "jobq", "jobq", STOCK, "stock control plane; jobq defaults"),
    Row("jobq-busy", "jobq, other jobs on the surviving nodes", "jobq", STOCK,
        f"as jobq, plus a {BYSTANDER_CPU:g}-CPU jobq job on each spare node", bystanders=True),
)}

_T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[bench +{time.monotonic() - _T0:6.1f}s] {line}", file=sys.stderr, flush=True)


def percentile50(values: list[float]) -> float:
    return statistics.median(values)


def parse_time(raw: str | None) -> float | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


# --- what the API server says, from one watch per resource ---------------------------------------


@dataclasses.dataclass
class PodSeen:
    uid: str
    namespace: str
    name: str
    labels: dict[str, str]
    first_seen: float
    node: str | None = None
    bound_seen: float | None = None
    running_seen: float | None = None
    started_at: str | None = None
    terminating_seen: float | None = None
    deleted_seen: float | None = None
    phase: str = ""


class ApiWatch:
    """Pods (all namespaces) and Nodes, listed then watched; each change stamped on arrival."""

    def __init__(self, server: str, tls: ssl.SSLContext) -> None:
        self._server = server
        self._tls = tls
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.pods: dict[str, PodSeen] = {}
        self.node_ready: dict[str, str] = {}
        self.not_ready_seen: dict[str, list[float]] = {}
        """Node -> when its Ready condition was seen turning from True to anything else."""
        self.tainted_seen: dict[str, float] = {}
        """Node -> when a NoExecute unreachable/not-ready taint was first seen on it."""
        self.renewed: dict[str, float] = {}
        """Node -> the renewTime of its Lease (the kubelet's clock, which is ours)."""
        self.synced = {"pod": threading.Event(), "node": threading.Event(), "lease": threading.Event()}
        self.errors = 0

    def start(self) -> None:
        for kind, path in (("pod", "/api/v1/pods"), ("node", "/api/v1/nodes"),
                           ("lease", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")):
            threading.Thread(target=self._run, args=(kind, path), name=f"watch-{kind}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _open(self, url: str, timeout: float) -> Any:
        return urllib.request.urlopen(url, context=self._tls, timeout=timeout)

    def _run(self, kind: str, path: str) -> None:
        handle = {"pod": self._on_pod, "node": self._on_node, "lease": self._on_lease}[kind]
        while not self._stop.is_set():
            try:
                with self._open(f"{self._server}{path}", 30) as resp:
                    listed = json.loads(resp.read())
                version = listed["metadata"]["resourceVersion"]
                for item in listed.get("items", []):
                    handle("LIST", item)
                self.synced[kind].set()
                while not self._stop.is_set():
                    url = (f"{self._server}{path}?watch=1&allowWatchBookmarks=true"
                           f"&timeoutSeconds=30&resourceVersion={version}")
                    with self._open(url, 60) as resp:
                        for raw in resp:
                            event = json.loads(raw)
                            if event["type"] == "ERROR":
                                raise RuntimeError(event["object"].get("message", "watch error"))
                            version = event["object"]["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                handle(event["type"], event["object"])
            except (OSError, ValueError, KeyError, RuntimeError, urllib.error.URLError):
                self.errors += 1
                self._stop.wait(0.5)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.time()
        meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
        with self._lock:
            seen = self.pods.get(meta["uid"])
            if seen is None:
                seen = self.pods[meta["uid"]] = PodSeen(meta["uid"], meta["namespace"], meta["name"],
                                                        dict(meta.get("labels", {})), first_seen=now)
            if spec.get("nodeName") and seen.node is None:
                seen.node, seen.bound_seen = spec["nodeName"], now
            seen.phase = status.get("phase", "")
            if meta.get("deletionTimestamp") and seen.terminating_seen is None:
                seen.terminating_seen = now
            if (seen.phase == "Running" and not meta.get("deletionTimestamp")
                    and seen.running_seen is None):
                seen.running_seen = now
                for container in status.get("containerStatuses", []):
                    seen.started_at = container.get("state", {}).get("running", {}).get("startedAt")
            if kind == "DELETED" and seen.deleted_seen is None:
                seen.deleted_seen = now

    def _on_node(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.time()
        name = obj["metadata"]["name"]
        conditions = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        ready = "Gone" if kind == "DELETED" else conditions.get("Ready", "Unknown")
        taints = {t.get("key") for t in obj.get("spec", {}).get("taints", [])
                  if t.get("effect") == "NoExecute"}
        with self._lock:
            before = self.node_ready.get(name)
            if before == "True" and ready != "True":
                self.not_ready_seen.setdefault(name, []).append(now)
            self.node_ready[name] = ready
            if taints & {"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}:
                self.tainted_seen.setdefault(name, now)

    def _on_lease(self, kind: str, obj: dict[str, Any]) -> None:
        renewed = parse_time(obj.get("spec", {}).get("renewTime"))
        if renewed is not None:
            with self._lock:
                self.renewed[obj["metadata"]["name"]] = renewed

    def lease_age(self, node: str, at: float) -> float | None:
        with self._lock:
            renewed = self.renewed.get(node)
        return None if renewed is None else round(at - renewed, 2)

    def snapshot(self) -> tuple[list[PodSeen], dict[str, str], dict[str, list[float]], dict[str, float]]:
        with self._lock:
            return ([dataclasses.replace(p) for p in self.pods.values()], dict(self.node_ready),
                    {n: list(t) for n, t in self.not_ready_seen.items()}, dict(self.tainted_seen))


# --- a cluster per row -----------------------------------------------------------------------------


def node_names() -> list[str]:
    return [f"node-{i:02d}" for i in range(1, NODE_COUNT + 1)]


class Cluster:
    """A control plane plus NODE_COUNT simulated kubelets, all started from the main thread (their
    parent-death signal is tied to it) and all stopped by ``stop``, pod processes included."""

    def __init__(self, config: ControlPlaneConfig, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.plane = ControlPlane(dataclasses.replace(config, state_dir=self.state_dir), progress=say)
        self.watch: ApiWatch | None = None

    def start(self) -> None:
        started = time.monotonic()
        state = self.plane.start()
        for name in node_names():
            # Staggered, so the Lease renewals (every 10 s) are spread over the interval as on a real
            # cluster: the Lease age at the kill then varies between the victims.
            nodes.start_kubelet(self.state_dir, nodes.NodeSpec(name, cpu=NODE_CPU, memory=NODE_MEMORY),
                                detached=False)
            time.sleep(KUBELET_STAGGER_S)
        nodes.wait_ready(self.state_dir, node_names(), timeout_s=180)
        pki = self.plane.pki
        self.watch = ApiWatch(state.server, probe.client_context(str(pki.ca.cert), pki.admin))
        self.watch.start()
        for event in self.watch.synced.values():
            event.wait(30)
        say(f"control plane + {NODE_COUNT} kubelets Ready in {time.monotonic() - started:.1f}s "
            f"(state in {self.state_dir})")

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([str(find_kubectl()), "--kubeconfig", str(self.plane.kubeconfig), *args],
                             input=stdin, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def kill_machine(self, name: str) -> None:
        if not nodes.kill_node(self.state_dir, name):
            say(f"WARNING: the kubelet of {name} was not running when it was to be killed")

    def stop(self) -> None:
        """Kubelets (SIGTERM) and every pod process they recorded (``stop_all``), then the
        control plane; each step runs even if an earlier one failed."""
        if self.watch is not None:
            self.watch.stop()
        try:
            nodes.stop_all(self.state_dir, timeout=3)
        finally:
            self.plane.stop(timeout=5)


# --- the measurement -------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    workload: str
    node: str
    killed_at: float
    lease_age_s: float | None = None
    """How long before the kill the node's Lease was last renewed (0-10 s)."""
    recovery_s: float | None = None
    """Kill -> replacement seen Running on another node; None: none within the timeout."""
    started_at_s: float | None = None
    """Kill -> the replacement container's startedAt (whole seconds)."""
    node_not_ready_s: float | None = None
    tainted_s: float | None = None
    original_terminating_s: float | None = None
    """Kill -> the lost pod got its deletionTimestamp (eviction, or jobq's force delete)."""
    replacement_created_s: float | None = None
    replacement_node: str | None = None
    replacements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every later pod of the workload: node, created/bound/running relative to the kill."""
    detours: int = 0
    """Replacement pods the scheduler bound to another killed node (they can never run)."""
    jobq: dict[str, Any] | None = None


def _rel(t: float | None, since: float) -> float | None:
    return None if t is None else round(t - since, 2)


def workload_pods(pods: list[PodSeen], label: str, workload: str) -> list[PodSeen]:
    return [p for p in pods if p.labels.get(label) == workload]


async def wait_placed(cluster: Cluster, label: str, workloads: list[str], *, what: str,
                      timeout: float = 240, distinct: bool = True) -> dict[str, PodSeen]:
    """Each workload's one Running pod, once all are Running (on distinct nodes if ``distinct``)."""
    assert cluster.watch is not None
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 15
    while True:
        pods, *_ = cluster.watch.snapshot()
        running: dict[str, PodSeen] = {}
        for w in workloads:
            live = [p for p in workload_pods(pods, label, w) if p.running_seen and not p.terminating_seen
                    and not p.deleted_seen]
            if len(live) == 1:
                running[w] = live[0]
        if len(running) == len(workloads):
            placed = {p.node for p in running.values()}
            if distinct and len(placed) != len(workloads):
                raise RuntimeError(f"{what}: workloads share nodes: {sorted(str(n) for n in placed)}")
            return running
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: only {len(running)}/{len(workloads)} Running after {timeout:.0f}s")
        if time.monotonic() > next_report:
            say(f"{what}: {len(running)}/{len(workloads)} Running")
            next_report += 15
        await asyncio.sleep(0.2)


async def kill_and_measure(cluster: Cluster, row: Row, label: str, first: dict[str, PodSeen],
                           progress_extra: Callable[[], str] = lambda: "") -> list[Sample]:
    assert cluster.watch is not None
    victims = sorted({str(p.node) for p in first.values()})
    killed_at: dict[str, float] = {}
    for node in victims:
        killed_at[node] = time.time()
        cluster.kill_machine(node)
    t_kill = min(killed_at.values())
    say(f"{row.key}: killed {len(victims)} machines (kubelet + pods) within "
        f"{max(killed_at.values()) - t_kill:.3f}s: {', '.join(victims)}; waiting up to {row.timeout_s:.0f}s")
    samples = {w: Sample(w, str(p.node), killed_at[str(p.node)],
                         cluster.watch.lease_age(str(p.node), killed_at[str(p.node)]))
               for w, p in first.items()}
    ages = sorted(a for s in samples.values() if (a := s.lease_age_s) is not None)
    if ages:
        say(f"{row.key}: the victims' Leases had been renewed {ages[0]:.1f}-{ages[-1]:.1f}s before the kill")
    next_report = time.monotonic() + 15
    deadline = time.monotonic() + row.timeout_s
    while True:
        pods, ready, not_ready, tainted = cluster.watch.snapshot()
        for w, sample in samples.items():
            mine = workload_pods(pods, label, w)
            lost = next(p for p in mine if p.uid == first[w].uid)
            sample.original_terminating_s = _rel(lost.terminating_seen, sample.killed_at)
            marked = min(not_ready.get(sample.node, []), default=None)
            sample.node_not_ready_s = _rel(marked, sample.killed_at)
            sample.tainted_s = _rel(tainted.get(sample.node), sample.killed_at)
            others = sorted((p for p in mine if p.uid != first[w].uid), key=lambda p: p.first_seen)
            if others:
                sample.replacement_created_s = _rel(others[0].first_seen, sample.killed_at)
            sample.replacements = [
                {"pod": p.name, "node": p.node, "created_s": _rel(p.first_seen, sample.killed_at),
                 "bound_s": _rel(p.bound_seen, sample.killed_at),
                 "running_s": _rel(p.running_seen, sample.killed_at),
                 "terminating_s": _rel(p.terminating_seen, sample.killed_at)} for p in others]
            sample.detours = sum(1 for p in others if p.node in killed_at)
            done = sorted((p for p in others if p.running_seen and p.node not in killed_at),
                          key=lambda p: p.running_seen or 0.0)
            if done and sample.recovery_s is None:
                sample.recovery_s = round((done[0].running_seen or 0.0) - sample.killed_at, 2)
                sample.replacement_node = done[0].node
                started = parse_time(done[0].started_at)
                sample.started_at_s = None if started is None else round(started - sample.killed_at, 2)
        pending = [s for s in samples.values() if s.recovery_s is None]
        if not pending:
            break
        elapsed = time.time() - t_kill
        if time.monotonic() > next_report:
            next_report += 15
            down = sum(1 for n in victims if ready.get(n) != "True")
            taints = sum(1 for n in victims if n in tainted)
            terminating = sum(1 for s in samples.values() if s.original_terminating_s is not None)
            say(f"{row.key}: +{elapsed:.0f}s after the kill: {WORKLOADS - len(pending)}/{WORKLOADS} running "
                f"again; victims NotReady {down}/{len(victims)}, tainted {taints}/{len(victims)}, "
                f"lost pods terminating {terminating}/{WORKLOADS}{progress_extra()}"
                f"{_expectation(row, elapsed)}")
        if time.monotonic() > deadline:
            say(f"{row.key}: gave up after {row.timeout_s:.0f}s with {len(pending)} workload(s) not replaced")
            break
        await asyncio.sleep(0.2)
    return list(samples.values())


def _expectation(row: Row, elapsed: float) -> str:
    if row.kind != "job":
        return ""
    cfg = row.plane
    grace = float(cfg.node_monitor_grace_period.rstrip("s"))
    tol = row.pod_toleration_s if row.pod_toleration_s is not None else cfg.toleration_seconds
    expected = grace + tol + 10
    if elapsed > expected + 30:
        return ""
    return f" (expected ≲ {expected:.0f}s: grace {grace:.0f} + tolerations {tol} + Job backoff 10)"


def false_not_ready(cluster: Cluster, victims: set[str]) -> dict[str, list[float]]:
    """Nodes the controller marked NotReady although nobody killed them (should be empty)."""
    assert cluster.watch is not None
    _, _, not_ready, _ = cluster.watch.snapshot()
    return {n: t for n, t in not_ready.items() if n not in victims}


# --- rows -----------------------------------------------------------------------------------------


def job_manifest(name: str, row: Row) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 10,
        "containers": [{"name": "main", "image": "busybox", "command": ["sleep", str(WORKLOAD_SECONDS)],
                        "resources": {"requests": {"cpu": f"{WORKLOAD_CPU:g}", "memory": WORKLOAD_MEMORY},
                                      "limits": {"memory": WORKLOAD_MEMORY}}}],
    }
    if row.pod_toleration_s is not None:
        pod_spec["tolerations"] = [
            {"key": key, "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": row.pod_toleration_s}
            for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": JOB_NAMESPACE},
            "spec": {"backoffLimit": 6, "template": {"spec": pod_spec}}}


async def run_job_row(row: Row, cluster: Cluster) -> tuple[list[Sample], dict[str, Any]]:
    cluster.kubectl("create", "namespace", JOB_NAMESPACE)
    names = [f"w{i}" for i in range(1, WORKLOADS + 1)]
    manifests = {"apiVersion": "v1", "kind": "List", "items": [job_manifest(n, row) for n in names]}
    deadline = time.monotonic() + 60
    while True:  # the namespace's default service account appears a moment after the namespace
        try:
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifests))
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    first = await wait_placed(cluster, JOB_LABEL, names, what=row.key)
    say(f"{row.key}: {WORKLOADS} Jobs Running on {', '.join(sorted(str(p.node) for p in first.values()))}; "
        f"killing in {SETTLE_S:.0f}s")
    await asyncio.sleep(SETTLE_S)
    samples = await kill_and_measure(cluster, row, JOB_LABEL, first)
    return samples, {}


class HeartbeatLog:
    """Latest heartbeat per (job id, attempt) on ``jobq.attempt.*.*.hb``, stamped on arrival."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, int], float] = {}

    async def on_msg(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        with contextlib.suppress(ValueError, IndexError):
            self.last[(parts[2], int(parts[3]))] = time.time()

    def beating(self, job_ids: list[str], within: float = 3.0) -> int:
        now = time.time()
        fresh = {j for (j, _), t in self.last.items() if now - t < within}
        return sum(1 for j in job_ids if j in fresh)


async def run_jobq_row(row: Row, cluster: Cluster, work: Path) -> tuple[list[Sample], dict[str, Any]]:
    env = {"JOBQ_BACKEND": "kubernetes", "JOBQ_KUBECONFIG": str(cluster.plane.kubeconfig),
           "JOBQ_NAMESPACE": JOBQ_NAMESPACE}
    config = StackConfig(data_dir=work / f"{row.key}-stack", nodes=0, nats_port=-1, http_port=0, env=env)
    stack = Stack(config, progress=lambda line: say(f"{row.key}: stack: {line}"))
    try:
        await stack.start()
        async with JobqClient(stack.nats_url) as client:
            beats = HeartbeatLog()
            await client.nc.subscribe("jobq.attempt.*.*.hb", cb=beats.on_msg)
            handles = [await client.submit(task="demo.sleep",
                                           args={"seconds": WORKLOAD_SECONDS, "progress_steps": 60},
                                           resources={"cpu": WORKLOAD_CPU, "memory": WORKLOAD_MEMORY})
                       for _ in range(WORKLOADS)]
            ids = [h.id for h in handles]
            first = await wait_placed(cluster, JOBQ_LABEL, ids, what=row.key)
            bystanders: list[str] = []
            if row.bystanders:
                busy = {p.node for p in first.values()}
                for _ in range(NODE_COUNT - WORKLOADS):
                    handle = await client.submit(task="demo.sleep",
                                                 args={"seconds": WORKLOAD_SECONDS, "progress_steps": 60},
                                                 resources={"cpu": BYSTANDER_CPU, "memory": "128Mi"})
                    bystanders.append(handle.id)
                placed = await wait_placed(cluster, JOBQ_LABEL, bystanders, what=f"{row.key} bystanders",
                                           distinct=False)
                on = sorted(str(p.node) for p in placed.values())
                say(f"{row.key}: bystanders Running on {', '.join(on)}"
                    f"{' (some on workload nodes)' if busy & set(on) else ''}")
            deadline = time.monotonic() + 90
            everyone = ids + bystanders
            while beats.beating(everyone) < len(everyone):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{row.key}: only {beats.beating(everyone)}/{len(everyone)} "
                                       "attempts heartbeating")
                await asyncio.sleep(0.2)
            say(f"{row.key}: {WORKLOADS} jobq jobs Running and heartbeating on "
                f"{', '.join(sorted(str(p.node) for p in first.values()))}; killing in {SETTLE_S:.0f}s")
            await asyncio.sleep(SETTLE_S)
            samples = await kill_and_measure(
                cluster, row, JOBQ_LABEL, first,
                lambda: f"; jobq attempts heartbeating {beats.beating(everyone)}/{len(everyone)}")
            await asyncio.sleep(2)  # the dispatcher records the replacement's start a moment later
            for sample in samples:
                record = await client.get(sample.workload)
                if record is None:
                    continue
                lost = record.attempts[0] if record.attempts else None
                new = record.attempts[1] if len(record.attempts) > 1 else None
                sample.jobq = {
                    "attempts": len(record.attempts),
                    "lost_reason": lost.reason.value if lost and lost.reason else None,
                    "lost_message": lost.message if lost else None,
                    "lost_finished_s": _rel(lost.finished_at.timestamp(), sample.killed_at)
                    if lost and lost.finished_at else None,
                    "replacement_started_s": _rel(new.started_at.timestamp(), sample.killed_at)
                    if new and new.started_at else None,
                }
            moved = 0
            for job_id in bystanders:
                record = await client.get(job_id)
                moved += record is not None and len(record.attempts) > 1
            extra = {"bystanders": len(bystanders), "bystanders_moved": moved}
            for job_id in everyone:
                with contextlib.suppress(Exception):
                    await client.cancel(job_id)
            return samples, extra
    finally:
        await stack.stop()


async def run_row(row: Row, work: Path) -> dict[str, Any]:
    say(f"=== {row.key}: {row.title} ({row.settings})")
    started = time.monotonic()
    cluster = Cluster(row.plane, work / row.key)
    try:
        cluster.start()
        load_before = os.getloadavg()
        if row.kind == "job":
            samples, extra = await run_job_row(row, cluster)
        else:
            samples, extra = await run_jobq_row(row, cluster, work)
        victims = {s.node for s in samples}
        spurious = false_not_ready(cluster, victims)
        if spurious:
            say(f"{row.key}: WARNING nodes went NotReady without being killed: {sorted(spurious)}")
        recovered = [s.recovery_s for s in samples if s.recovery_s is not None]
        result = {
            "row": row.key, "title": row.title, "settings": row.settings,
            "kills": len(victims), "workloads": len(samples), "recovered": len(recovered),
            "detours": sum(s.detours for s in samples),
            "p50_s": round(percentile50(recovered), 1) if recovered else None,
            "max_s": round(max(recovered), 1) if recovered else None,
            "samples": [dataclasses.asdict(s) for s in samples],
            "spurious_not_ready": spurious, "watch_errors": cluster.watch.errors if cluster.watch else 0,
            "loadavg_before_kill": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "row_seconds": round(time.monotonic() - started, 1), **extra,
        }
        say(f"{row.key}: {len(recovered)}/{len(samples)} replaced; p50 {result['p50_s']}s, "
            f"max {result['max_s']}s (row took {result['row_seconds']:.0f}s)")
        return result
    finally:
        say(f"{row.key}: stopping the cluster")
        cluster.stop()


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def markdown(results: list[dict[str, Any]], total_s: float) -> str:
    lines = ["| row | kills | p50 (s) | max (s) | replacements bound to a dead node | settings |",
             "|---|---:|---:|---:|---:|---|"]
    for r in results:
        missing = r["workloads"] - r["recovered"]
        kills = f"{r['kills']}" + (f" ({missing} not replaced)" if missing else "")
        lines.append(f"| {r['title']} | {kills} | {fmt(r['p50_s'])} | {fmt(r['max_s'])} | {r['detours']} "
                     f"| {r['settings']} |")
    lines.append("")
    lines.append(f"Seconds from the SIGKILL of a machine (kubelet + pods) until a replacement pod of the "
                 f"same workload was seen Running (API watch) on another node; {NODE_COUNT} nodes × "
                 f"{NODE_CPU:g} CPU, {WORKLOADS} workloads × {WORKLOAD_CPU:g} CPU, all {WORKLOADS} busy "
                 f"nodes killed at once, {KUBELET_CADENCE}; one run, total {total_s / 60:.1f} min.")
    return "\n".join(lines)


async def main_async(keys: list[str], work: Path) -> list[dict[str, Any]]:
    return [await run_row(ROWS[key], work) for key in keys]


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (and SIGHUP) as Ctrl-C: unwind, so every ``finally`` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join((__doc__ or "").split("\n")[1:]))
    parser.add_argument("--only", choices=list(ROWS), action="append", metavar="ROW",
                        help=f"run only this row (repeatable): {', '.join(ROWS)}")
    parser.add_argument("--json", action="store_true",
                        help="print the results (every sample) as JSON on stdout; the table goes to stderr")
    parser.add_argument("--keep", action="store_true", help="keep the state directories (logs) afterwards")
    args = parser.parse_args()
    keys = [k for k in ROWS if k in (args.only or ROWS)]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ensure_binaries(progress=say)
    work = Path(tempfile.mkdtemp(prefix="jobq-bench-"))
    started = time.monotonic()
    ok = False
    try:
        results = asyncio.run(main_async(keys, work))
        ok = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; everything was stopped")
        sys.exit(130)
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"state and logs kept in {work}")
    total = time.monotonic() - started
    table = markdown(results, total)
    if args.json:  # the table still goes to stderr, after the progress lines
        print(table, file=sys.stderr)
        document = {"rows": results, "total_s": round(total, 1), "command": " ".join(sys.argv)}
        print(json.dumps(document, indent=2))
    else:
        print(table)


if __name__ == "__main__":
    main()
