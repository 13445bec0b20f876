"""The waiting room's bookkeeping (pure): lines in order, wake-ups only from the changes that can
release a waiter, and the job index's running counts kept incrementally."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from broker import contract
from broker.dispatcher import placement
from broker.dispatcher.action import Action
from broker.dispatcher.admission import Admission
from broker.dispatcher.index import JobIndex
from broker.dispatcher.waiting_room import QUEUE_FULL, Sweep, WaitingRoom

Phase = contract.JobPhase
LATER = Action(summary=f"waiting:{placement.Fit.LATER}")
NEVER = Action(summary=f"waiting:{placement.Fit.NEVER}")
SLOT = Action(summary=QUEUE_FULL)
STARTED = Action(summary="create_attempt")


def record(job_id: str, *, priority: int = 0, queue: str = "default", phase: Phase = Phase.QUEUED,
           disruptions: int = 0) -> contract.JobRecord:
    now = contract.utcnow()
    return contract.JobRecord(
        spec=contract.JobSpec(id=job_id, task="demo.sleep", priority=priority, queue=queue),
        phase=phase, disruptions=disruptions, submitted_at=now, updated_at=now)


def test_line_matches_a_sorted_list_through_random_moves() -> None:
    """``best`` equals sorting every live waiter, whatever came and went (the heap keeps stale
    entries and compacts them; a waiter whose standing changed moves)."""
    rng = random.Random(7)
    line = Admission()
    model: dict[str, tuple[tuple[int, int], int]] = {}
    order = 0
    for step in range(3000):
        job = f"j{rng.randrange(300)}"
        if rng.random() < 0.55:
            rec = record(job, priority=rng.randrange(4), disruptions=rng.randrange(2))
            line.waiting(rec)
            key = (-rec.spec.priority, 0 if rec.disruptions else 1)
            if job not in model:
                model[job] = (key, order)
                order += 1
            else:
                model[job] = (key, model[job][1])
        else:
            assert line.admitted(job) == (job in model)
            model.pop(job, None)
        if step % 50 == 0:
            n = rng.randrange(1, 20)
            expected = [j for j, _ in sorted(model.items(), key=lambda item: item[1])[:n]]
            assert line.best(n) == expected
            assert len(line) == len(model)


def test_blocked_only_by_a_better_waiter_never_by_itself() -> None:
    line = Admission()
    line.waiting(record("mid", priority=5))
    assert line.blocked(record("low", priority=0))
    assert not line.blocked(record("mid", priority=5))  # itself
    assert not line.blocked(record("peer", priority=5))  # same standing: nobody blocks anybody
    line.waiting(record("mid", priority=0))  # its priority dropped: its old standing is gone
    assert not line.blocked(record("low", priority=0))
    assert line.blocked(record("worse", priority=-1))


class Woken(list[str]):
    def __call__(self, job_id: str) -> None:
        self.append(job_id)


def test_an_ending_attempt_wakes_the_first_few_of_the_node_line_not_all() -> None:
    woken = Woken()
    room = WaitingRoom(wake=woken)
    for n in range(100):
        room.track(record(f"w{n:03}", priority=n % 3), LATER, timed=False)
    assert room.parked("w000") and not woken
    running = record("r", phase=Phase.RUNNING)
    room.changed(running, running.model_copy(update={"phase": Phase.SUCCEEDED}))
    assert len(woken) == 4 and all(room.parked(j) for j in woken)
    assert {record(j).spec.id for j in woken} == {"w002", "w005", "w008", "w011"}  # priority 2 first
    woken.clear()
    room.changed(running, running)  # still running: nothing frees
    room.changed(None, running)
    assert not woken


def test_a_created_pod_passes_the_wake_up_on_and_leaves_the_line() -> None:
    woken = Woken()
    room = WaitingRoom(wake=woken)
    room.track(record("a"), LATER, timed=False)
    room.track(record("b"), LATER, timed=False)
    room.track(record("a", phase=Phase.RUNNING), STARTED, timed=True)
    room.created("a")
    assert woken == ["b"] and not room.parked("a")


def test_queue_slot_waiters_are_woken_one_by_one_by_their_own_queue() -> None:
    woken = Woken()
    room = WaitingRoom(wake=woken)
    for name in ("s1", "s2", "s3"):
        room.track(record(name, queue="slot"), SLOT, timed=False)
    room.track(record("other", queue="other"), SLOT, timed=False)
    ended = record("x", queue="elsewhere", phase=Phase.RUNNING)
    room.changed(ended, ended.model_copy(update={"phase": Phase.DEAD}))
    assert woken == []  # another queue's slot freed
    ended = record("x", queue="slot", phase=Phase.RUNNING)
    room.changed(ended, ended.model_copy(update={"phase": Phase.DEAD}))
    assert woken == ["s1"]
    room.track(record("s1", queue="slot", phase=Phase.RUNNING), STARTED, timed=True)  # it took the slot
    assert woken == ["s1", "s2"]  # the next one looks (it finds the queue full again, or not)
    room.track(record("s2", queue="slot"), SLOT, timed=False)
    assert woken == ["s1", "s2"] and room.parked("s2")
    room.track(record("s3", queue="slot"), LATER, timed=False)  # woken by the sweep; now waits for a node
    assert room.parked("s3") and "s3" in room.nodes and "s3" not in room.queues["slot"]


def test_a_running_job_without_a_timer_is_watched_until_a_pass_times_it() -> None:
    room = WaitingRoom(wake=Woken())
    running = record("cmd", phase=Phase.RUNNING)
    room.track(running, Action(summary="watching"), timed=False)
    assert room.parked("cmd") and len(room) == 1
    room.track(running, Action(summary="watching"), timed=True)
    assert not room.parked("cmd")
    room.track(running, Action(summary="watching"), timed=False)
    room.track(running.model_copy(update={"phase": Phase.SUCCEEDED}), Action(summary="succeeded"),
               timed=False)
    assert not room.parked("cmd") and len(room) == 0


def test_unplaceable_jobs_wake_only_when_nodes_change() -> None:
    woken = Woken()
    room = WaitingRoom(wake=woken)
    room.track(record("huge"), NEVER, timed=False)
    room.track(record("fits-later"), LATER, timed=False)
    room.room_freed(10)
    assert woken == ["fits-later"]
    woken.clear()
    room.nodes_changed(10)
    assert sorted(woken) == ["fits-later", "huge"]
    room.track(record("huge", phase=Phase.CANCELLED), Action(summary="cancelled"), timed=False)
    assert not room.parked("huge") and len(room) == 1


def test_sweep_visits_every_parked_job_once_per_sweep_in_slices_sized_by_the_backlog() -> None:
    sweep = Sweep(ticks=4)
    parked = [f"p{n}" for n in range(10)]
    slices = [sweep.take(lambda: parked, count=10) for _ in range(4)]
    assert [len(s) for s in slices] == [3, 3, 3, 1]
    assert sorted(j for s in slices for j in s) == sorted(parked)
    assert sweep.take(lambda: ["new"], count=1) == ["new"]  # the next sweep reads them again
    assert Sweep(ticks=4).take(lambda: [], count=0) == []
    growing = Sweep(ticks=4)
    assert len(growing.take(lambda: parked, count=10)) == 3
    assert len(growing.take(lambda: parked, count=40)) == 7  # the backlog grew: bigger slices


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from(list(Phase)), st.sampled_from(["a", "b"])),
                max_size=80))
def test_index_counts_kept_incrementally_equal_a_recount(changes: list[tuple[int, Phase, str]]) -> None:
    index = JobIndex()
    for revision, (n, phase, queue) in enumerate(changes, start=1):
        known = index.get(f"j{n}")
        queue = known.spec.queue if known else queue  # a job keeps its queue
        index.put(record(f"j{n}", queue=queue, phase=phase), revision)
    records = list(index.records())
    assert sorted(index.active_ids()) == sorted(r.spec.id for r in records if not r.phase.is_terminal)
    for queue in ("a", "b"):
        assert index.running_in(queue) == sum(
            1 for r in records if r.spec.queue == queue and r.phase == Phase.RUNNING)
