"""Node health from attempt heartbeats, and the verdict that combines it with the backend's view."""

from __future__ import annotations

import pytest

from broker.dispatcher.node_health import Evidence, NodeHeartbeats, node_lost


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beats(silence_s: float = 5.0) -> tuple[NodeHeartbeats, Clock]:
    clock = Clock()
    return NodeHeartbeats(silence_s=silence_s, clock=clock), clock


def test_a_node_is_alive_while_any_attempt_there_beats() -> None:
    h, clock = beats()
    h.record("a", "j1", 1)
    h.record("a", "j2", 1)
    clock.now += 4
    h.record("a", "j2", 1)
    clock.now += 3
    assert h.evidence("a") is Evidence.ALIVE  # j1 is quiet, j2 beat 3 s ago


def test_a_node_is_silent_only_when_others_kept_beating_after_it_went_quiet() -> None:
    h, clock = beats()
    h.record("a", "j1", 1)
    h.record("b", "j2", 1)
    clock.now += 6
    # Nobody beat for 6 s: that is more likely our side (or NATS) than node a.
    assert h.evidence("a") is Evidence.UNKNOWN
    h.record("b", "j2", 1)
    assert h.evidence("a") is Evidence.SILENT
    assert h.evidence("b") is Evidence.ALIVE
    assert h.silent_for("a") == pytest.approx(6)


def test_a_stalled_dispatcher_sees_no_silence() -> None:
    h, clock = beats()
    h.record("a", "j1", 1)
    h.record("b", "j2", 1)
    clock.now += 30  # the dispatcher was paused; the backlog of beats arrives together
    h.record("b", "j2", 1)
    h.record("a", "j1", 1)
    assert h.evidence("a") is Evidence.ALIVE and h.evidence("b") is Evidence.ALIVE


def test_unknown_without_beating_attempts_and_forgetting_ended_ones() -> None:
    h, clock = beats()
    assert h.evidence("a") is Evidence.UNKNOWN and h.evidence(None) is Evidence.UNKNOWN
    h.record("a", "j1", 1)
    h.record("b", "j2", 1)
    clock.now += 6
    h.record("b", "j2", 1)
    h.forget("j1", 1)  # j1's attempt ended normally: its silence says nothing about node a
    assert h.evidence("a") is Evidence.UNKNOWN
    assert h.attempts_on("b") == [("j2", 1)]


def test_newly_silent_reports_each_transition_once() -> None:
    h, clock = beats()
    h.record("a", "j1", 1)
    h.record("b", "j2", 1)
    clock.now += 6
    h.record("b", "j2", 1)
    assert h.newly_silent() == ["a"]
    assert h.newly_silent() == []
    h.record("a", "j1", 1)
    assert h.newly_silent() == []


def test_an_attempt_that_moved_node_is_filed_under_the_new_one() -> None:
    h, _ = beats()
    h.record("a", "j1", 1)
    h.record("b", "j1", 1)
    assert h.attempts_on("a") == [] and h.attempts_on("b") == [("j1", 1)]


def test_prune_drops_attempts_not_heard_from_for_long() -> None:
    h, clock = beats()
    h.record("a", "j1", 1)
    clock.now += 700
    h.prune(older_than_s=600)
    assert h.attempts_on("a") == []


def verdict(**kw: object) -> str | None:
    args: dict[str, object] = {"node": "n1", "backend_ready": True, "backend_why": "",
                               "evidence": Evidence.UNKNOWN, "beating": False, "task": True,
                               "silent_for": 0.0}
    args.update(kw)
    return node_lost(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "kw", "lost"),
    [
        ("healthy", {}, False),
        ("machine dead: attempts silent together", {"evidence": Evidence.SILENT, "silent_for": 6.0}, True),
        ("machine dead, command pod: Lease not expired yet",
         {"evidence": Evidence.SILENT, "task": False}, False),
        ("Lease expired, nothing beats there", {"backend_ready": False, "backend_why": "Lease"}, True),
        ("command pod on an expired Lease", {"backend_ready": False, "task": False}, True),
        ("kubelet dead, this attempt beats", {"backend_ready": False, "beating": True}, False),
        ("kubelet dead, other attempts there beat",
         {"backend_ready": False, "evidence": Evidence.ALIVE}, False),
        ("kubelet dead, command pod, tasks there beat",
         {"backend_ready": False, "evidence": Evidence.ALIVE, "task": False}, False),
        ("an attempt that beats is never lost", {"evidence": Evidence.SILENT, "beating": True}, False),
        ("pod not placed", {"node": None, "backend_ready": False}, False),
    ],
)
def test_node_lost_table(case: str, kw: dict[str, object], lost: bool) -> None:
    assert (verdict(**kw) is not None) == lost, case


def test_node_lost_says_why() -> None:
    assert verdict(backend_ready=False, backend_why="node n1: Lease not renewed for 41s") == (
        "node n1: Lease not renewed for 41s")
    assert "stopped heartbeating 6.0s ago" in (verdict(evidence=Evidence.SILENT, silent_for=6.0) or "")


def test_a_node_the_backend_saw_come_back_is_no_suspect_before_or_after_its_silence_is_seen() -> None:
    now = [100.0]
    nodes = NodeHeartbeats(silence_s=5, clock=lambda: now[0])
    nodes.record("a", "j1", 1)
    nodes.record("b", "j2", 1)
    now[0] = 107.0
    nodes.record("b", "j2", 1)  # b keeps beating, a fell silent
    assert nodes.evidence("a") == Evidence.SILENT and nodes.suspects() == {"a"}
    nodes.vouched("a")  # its agent restarted: new attempts may go there
    assert nodes.suspects() == frozenset()
    assert nodes.evidence("a") == Evidence.SILENT  # its old attempt is still lost
    assert nodes.suspects() == frozenset()  # but the node is not avoided again
    now[0] = 120.0
    nodes.record("b", "j2", 1)
    nodes.record("c", "j3", 1)
    now[0] = 127.0
    nodes.record("b", "j2", 1)
    nodes.vouched("c")  # back before its silence is judged: same
    assert nodes.evidence("c") == Evidence.SILENT and nodes.suspects() == frozenset()
