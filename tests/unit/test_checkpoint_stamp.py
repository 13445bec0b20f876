"""The dispatcher's pure checkpoint logic: what an ended attempt is stamped with (its checkpoints
and the work a disruption threw away), and which checkpoint objects are garbage under a pointer
(docs/design/checkpoints-dispatcher.md). The NATS side is in tests/integration/test_checkpoints.py."""

from __future__ import annotations

import datetime as dt

from broker import checkpoint_gc, contract
from broker.dispatcher import checkpoint_stamp
from broker.dispatcher.checkpoints import new_checkpoints
from tests.unit.test_decide import NOW, Phase, Pod, Reason, State, attempt, job, pod, run

T = NOW - dt.timedelta(seconds=3)
"""When the planted newest checkpoint was written."""
WRITER = contract.Writer(pod="job-j1-1", pod_uid="u1", node="node-1")


def key(a: int, s: int) -> str:
    return contract.checkpoint_object_key("j1", a, s)


def pointer(owner: int = 1, seq: int = 3, *, made_by: int | None = None, obj: str | None = None,
            **fields: object) -> contract.CheckpointPointer:
    made = made_by or owner
    return contract.CheckpointPointer(
        job_id="j1", owner=owner, seq=seq, step=10 * seq if seq or obj else None,
        object=obj if obj is not None else (key(made, seq) if seq else ""), digest="sha256:00", size=1,
        writer=WRITER, made_by=made, at=T if seq or obj else None, **fields)


def ended(action_record: contract.JobRecord, before: contract.JobRecord,
          ptr: contract.CheckpointPointer | None, *, pod_beat: dt.datetime | None = None,
          node_beat: dt.datetime | None = None) -> contract.Attempt:
    numbers = checkpoint_stamp.newly_ended(before, action_record)
    assert numbers == (1,)
    stamped = checkpoint_stamp.stamp(action_record, numbers, ptr, pod_beats={1: pod_beat},
                                     node_beats={"node-1": node_beat})
    return stamped.attempts[0]


# --- stamping ------------------------------------------------------------------------------------


def test_node_lost_attempt_loses_the_work_since_its_newest_checkpoint() -> None:
    before = job(phase=Phase.RUNNING, attempts=(attempt(),))
    action = run(before, pod(ready=False))
    assert action.record is not None
    beat = NOW - dt.timedelta(seconds=1)  # its last heartbeat: 2 s after the checkpoint
    lost = ended(action.record, before, pointer(), pod_beat=beat, node_beat=NOW)
    assert lost.reason == Reason.NODE_LOST
    assert lost.checkpoints == contract.AttemptCheckpoints(written=3, step=30, at=T)
    assert lost.work_lost_s == 2.0
    # No heartbeat of its own: its node's last one counts; with none, the checkpoint is the last
    # sign of life (the end itself counts only when there is no evidence at all).
    assert ended(action.record, before, pointer(), node_beat=NOW - dt.timedelta(seconds=2)).work_lost_s == 1.0
    assert ended(action.record, before, pointer()).work_lost_s == 0.0
    # A heartbeat older than the checkpoint (beats come every second, checkpoints in between).
    early = T - dt.timedelta(seconds=0.5)
    assert ended(action.record, before, pointer(), pod_beat=early, node_beat=NOW).work_lost_s == 0.0


def test_succeeded_attempt_gets_its_checkpoints_and_no_work_lost() -> None:
    before = job(phase=Phase.RUNNING, attempts=(attempt(),))
    action = run(before, pod(phase=Pod.SUCCEEDED, exit_code=0), result_exists=True)
    assert action.record is not None and action.record.phase == Phase.SUCCEEDED
    done = ended(action.record, before, pointer(), pod_beat=NOW)
    assert done.state == State.SUCCEEDED and done.checkpoints is not None and done.checkpoints.written == 3
    assert done.work_lost_s is None


def test_work_lost_counts_from_the_claim_or_the_start_without_a_checkpoint() -> None:
    lost = attempt().model_copy(
        update={"state": State.FAILED, "reason": Reason.NODE_LOST, "finished_at": NOW})
    beat = NOW - dt.timedelta(seconds=1)
    # Never wrote one: from its start (5 s before NOW).
    assert checkpoint_stamp.work_lost_s(lost, None, pod_beat=beat) == 4.0
    # Another attempt owns the pointer: this one's checkpoints are unknown, so from its start.
    assert checkpoint_stamp.work_lost_s(lost, pointer(owner=2, seq=0, obj=key(1, 3)), pod_beat=beat) == 4.0
    # It took the pointer (restored attempt 0's... here its own claim) 2 s before NOW, wrote none.
    claimed = pointer(owner=1, seq=0, obj="", resumed_at=NOW - dt.timedelta(seconds=2))
    assert checkpoint_stamp.work_lost_s(lost, claimed, pod_beat=beat) == 1.0
    # A heartbeat older than the checkpoint: nothing lost, never negative.
    assert checkpoint_stamp.work_lost_s(lost, pointer(), pod_beat=T - dt.timedelta(seconds=1)) == 0.0
    # Never started and never took the pointer: unknown.
    unstarted = lost.model_copy(update={"started_at": None})
    assert checkpoint_stamp.work_lost_s(unstarted, None, pod_beat=None) is None


def test_only_the_attempts_this_pass_ended_are_stamped() -> None:
    first = attempt().model_copy(update={"state": State.FAILED, "reason": Reason.NODE_LOST, "finished_at": T})
    before = job(phase=Phase.RUNNING, attempts=(first, attempt(2)))
    assert checkpoint_stamp.newly_ended(before, before) == ()
    action = run(before, pod(2, phase=Pod.FAILED, exit_code=1))
    assert action.record is not None
    assert checkpoint_stamp.newly_ended(before, action.record) == (2,)


# --- garbage -------------------------------------------------------------------------------------


def test_superseded_objects_and_never_the_referenced_one() -> None:
    p3 = pointer(seq=3)
    assert checkpoint_gc.superseded("j1", pointer(seq=1), p3) == [key(1, 1), key(1, 2)]
    assert checkpoint_gc.superseded("j1", None, p3) == [key(1, 2)]  # first sight: the one below
    claim = pointer(owner=2, seq=0, made_by=1, obj=key(1, 3), resumed_from=1, resumed_step=30)
    assert checkpoint_gc.superseded("j1", p3, claim) == [key(1, 4)]  # a stale put before a lost CAS
    after = pointer(owner=2, seq=1, resumed_from=1)
    assert checkpoint_gc.superseded("j1", claim, after) == [key(1, 3)]


def test_a_pointer_moving_back_or_naming_nonsense_deletes_nothing_it_references() -> None:
    p5 = pointer(owner=2, seq=5)
    back = pointer(owner=2, seq=1)
    assert checkpoint_gc.superseded("j1", p5, back) == []  # 2/5 may be referenced again: kept
    older_owner = pointer(owner=1, seq=3)
    assert checkpoint_gc.superseded("j1", p5, older_owner) == []
    forged = pointer(owner=7, seq=2, obj="other-job/1/.checkpoint/1")
    # Under owner 7 attempt 2 can change nothing: its objects, and 7/1 below 7/2, are garbage.
    assert checkpoint_gc.superseded("j1", p5, forged) == [key(2, 5), key(2, 6), key(7, 1)]
    for name in ("other-job/1/.checkpoint/1", "j1/1/out.txt", "j1/x/.checkpoint/1", "j1/1/.checkpoint/0"):
        assert not checkpoint_gc.collectable(forged, "j1", name), name
    assert not checkpoint_gc.collectable(p5, "j1", p5.object)
    assert not checkpoint_gc.collectable(p5, "j1", key(2, 6))  # may be in flight
    assert not checkpoint_gc.collectable(p5, "j1", key(3, 1))  # a newer attempt's


def test_attempt_end_collects_its_older_objects_and_retention_names_every_one() -> None:
    first = attempt().model_copy(update={"state": State.FAILED, "reason": Reason.NODE_LOST, "finished_at": T,
                                         "checkpoints": contract.AttemptCheckpoints(written=3)})
    second = attempt(2).model_copy(update={"state": State.SUCCEEDED, "finished_at": NOW})
    record = job(phase=Phase.SUCCEEDED, attempts=(first, second))
    ptr = pointer(owner=2, seq=2, resumed_from=1)
    assert checkpoint_gc.at_attempt_end(record, (2,), ptr) == [key(1, 3), key(2, 1)]
    assert checkpoint_gc.at_attempt_end(record, (2,), None) == []
    assert checkpoint_gc.every_object(record, ptr) == [
        key(1, 1), key(1, 2), key(1, 3), key(1, 4), key(2, 1), key(2, 2), key(2, 3)]


def test_checkpoints_counted_from_pointer_changes() -> None:
    assert new_checkpoints(None, pointer(seq=3)) == 3
    assert new_checkpoints(pointer(seq=3), pointer(seq=5)) == 2
    assert new_checkpoints(pointer(seq=3), pointer(owner=2, seq=0, obj=key(1, 3))) == 0
    assert new_checkpoints(pointer(owner=2, seq=0, obj=key(1, 3)), pointer(owner=2, seq=1)) == 1
    assert new_checkpoints(pointer(owner=2, seq=4), pointer(owner=1, seq=9)) == 0  # moved back
