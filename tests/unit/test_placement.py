"""Placement: can a queued job run now, later, or never, on the nodes the backend reports."""

from __future__ import annotations

from broker import contract
from broker.backends.base import NodeState
from broker.dispatcher.admission import Admission
from broker.dispatcher.placement import Fit, judge

R = contract.Resources


def node(
    name: str, *, cpu: float = 4, memory: str = "8Gi", gpu: int = 0, used_cpu: float = 0, ready: bool = True
) -> NodeState:
    return NodeState(
        name=name,
        ready=ready,
        capacity=R(cpu=cpu, memory=memory, gpu=gpu),
        allocated_cpu=used_cpu,
        allocated_memory=0,
        pods=0,
        last_heartbeat=None,
    )


def test_fits_now_later_never() -> None:
    nodes = [node("a", used_cpu=3.5), node("b", used_cpu=1)]
    assert judge(R(cpu=2), nodes).fit == Fit.NOW
    later = judge(R(cpu=3.5), nodes)
    assert later.fit == Fit.LATER and "no Ready node has that free now" in later.reason
    never = judge(R(cpu=200), nodes)
    assert never.fit == Fit.NEVER
    assert never.reason == "unschedulable: needs 200 CPU; largest Ready node offers 4"


def test_never_names_the_missing_resource() -> None:
    nodes = [node("a", memory="8Gi")]
    assert "needs 64Gi memory; largest Ready node offers 8.0Gi" in judge(R(memory="64Gi"), nodes).reason
    assert "needs 1 GPU; largest Ready node offers 0" in judge(R(gpu=1), nodes).reason


def test_not_ready_and_avoided_nodes_do_not_count() -> None:
    nodes = [node("a", cpu=16, ready=False), node("b", cpu=16), node("c", cpu=2)]
    assert judge(R(cpu=8), nodes).fit == Fit.NOW
    assert judge(R(cpu=8), nodes, avoid=("b",)).fit == Fit.NEVER
    assert judge(R(cpu=1), [node("a", ready=False)]).reason == "unschedulable: no Ready node"


def test_a_cluster_that_waits_by_itself_only_hears_never() -> None:
    full = [node("a", used_cpu=4)]
    assert judge(R(cpu=2), full, cluster_waits=True).fit == Fit.NOW
    assert judge(R(cpu=8), full, cluster_waits=True).fit == Fit.NEVER


def record(job_id: str, priority: int) -> contract.JobRecord:
    now = contract.utcnow()
    return contract.JobRecord(
        spec=contract.JobSpec(id=job_id, task="demo.sleep", priority=priority),
        submitted_at=now,
        updated_at=now,
    )


def test_admission_keeps_order_without_timers() -> None:
    admission = Admission()
    admission.waiting(record("low", 0))
    admission.waiting(record("high", 5))
    admission.waiting(record("low2", 0))
    assert admission.best(3) == ["high", "low", "low2"]
    assert admission.blocked(record("other", 1)) and not admission.blocked(record("top", 9))
    admission.waiting(record("low", 0))  # asking again keeps its place in line
    assert admission.best(3) == ["high", "low", "low2"]
    admission.admitted("high")
    assert not admission.blocked(record("other", 1))
