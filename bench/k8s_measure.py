"""The rows of ``bench.k8s_recovery`` and what each measures: place the workloads, kill their
machines, and time each workload's replacement from an ``ApiWatch`` snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.k8s_cluster import Cluster, PodSeen, parse_time, say
from devcluster.controlplane import ControlPlaneConfig

WORKLOADS = 5
WORKLOAD_CPU = 3.0
WORKLOAD_MEMORY = "256Mi"
WORKLOAD_SECONDS = 1800
"""How long a workload runs: far longer than any measurement (and bounded if a run leaks it)."""
BYSTANDER_CPU = 0.5
SETTLE_S = 5.0
"""Every row waits this long between "all workloads Running" and the kill."""
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


# --- the measurement -------------------------------------------------------------------------------


def percentile50(values: list[float]) -> float:
    return statistics.median(values)


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


def rel(t: float | None, since: float) -> float | None:
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
            sample.original_terminating_s = rel(lost.terminating_seen, sample.killed_at)
            marked = min(not_ready.get(sample.node, []), default=None)
            sample.node_not_ready_s = rel(marked, sample.killed_at)
            sample.tainted_s = rel(tainted.get(sample.node), sample.killed_at)
            others = sorted((p for p in mine if p.uid != first[w].uid), key=lambda p: p.first_seen)
            if others:
                sample.replacement_created_s = rel(others[0].first_seen, sample.killed_at)
            sample.replacements = [
                {"pod": p.name, "node": p.node, "created_s": rel(p.first_seen, sample.killed_at),
                 "bound_s": rel(p.bound_seen, sample.killed_at),
                 "running_s": rel(p.running_seen, sample.killed_at),
                 "terminating_s": rel(p.terminating_seen, sample.killed_at)} for p in others]
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
