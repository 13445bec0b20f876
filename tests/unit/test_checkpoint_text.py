"""How checkpoints and work lost read in `jobq status`, and what a pointer says of an attempt
(the pure parts of ``submitter.checkpoint_text`` and ``broker.readmodel.checkpoints``)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from pydantic import ValidationError

from broker import contract
from broker.readmodel import checkpoints
from submitter.checkpoint_text import checkpoint_text, clock, work_lost_text
from submitter.commands import attempt_lines, status_lines

NOW = dt.datetime(2026, 12, 2, 12, 0, 3, tzinfo=dt.UTC)
State, Reason = contract.AttemptState, contract.FailureReason


def local(at: dt.datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S")


def ended(number: int, **fields: object) -> contract.Attempt:
    return contract.Attempt(number=number, pod=contract.pod_name("j1", number), created_at=NOW, **fields)


def pointer(**fields: object) -> contract.CheckpointPointer:
    return contract.CheckpointPointer.model_validate(
        {"job_id": "j1", "owner": 2, "seq": 3, "step": 7, "at": NOW, "made_by": 2, "resumed_step": 4,
         "resumed_from": 1, "resumed_at": NOW, **fields})


def test_checkpoint_text_says_the_step_when_and_what_it_resumed_from() -> None:
    resumed = contract.AttemptCheckpoints(written=3, step=7, at=NOW, resumed_step=4, resumed_from_attempt=1)
    assert checkpoint_text(resumed) == f"step 7 at {local(NOW)} (resumed from step 4 of attempt 1)"
    first = contract.AttemptCheckpoints(written=1, step=0, at=NOW)
    assert checkpoint_text(first) == f"step 0 at {local(NOW)}"
    restored_only = contract.AttemptCheckpoints(written=0, resumed_step=4, resumed_from_attempt=1)
    assert checkpoint_text(restored_only) == "none written (resumed from step 4 of attempt 1)"
    assert checkpoint_text(contract.AttemptCheckpoints()) == "none written"
    assert work_lost_text(2.14) == "2.1 s" and work_lost_text(0) == "0.0 s"


def test_a_time_the_local_zone_cannot_hold_is_shown_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    edge = dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-12)))  # 12 h past year 9999 UTC
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        with pytest.raises(OverflowError):
            edge.astimezone()
        assert clock(edge) == "9999-12-31T23:59:59.999999-12:00"
        assert clock(NOW) == "12:00:03"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_status_shows_the_live_checkpoint_and_each_attempts_checkpoints_and_work_lost() -> None:
    first = ended(1, state=State.FAILED, reason=Reason.NODE_LOST, node="n1", work_lost_s=2.14,
                  checkpoints=contract.AttemptCheckpoints(written=4, step=4, at=NOW))
    second = ended(2, state=State.RUNNING, node="n2")
    record = contract.JobRecord(spec=contract.JobSpec(id="j1", task="demo.sleep"),
                                phase=contract.JobPhase.RUNNING, attempts=(first, second),
                                submitted_at=NOW, updated_at=NOW)
    live = checkpoints.of_pointer(pointer(), "j1", 2)
    assert live is not None
    lines = status_lines(record, None, live)
    assert lines[1] == f"  checkpoint: step 7 at {local(NOW)} (resumed from step 4 of attempt 1)"
    at = lines.index(attempt_lines(record)[0])
    assert lines[at + 1:at + 3] == [f"    checkpoint: step 4 at {local(NOW)}", "    work lost: 2.1 s"], lines
    assert lines[at + 3].startswith("  attempt 2: running") and len(lines) == at + 4, lines
    assert not any(line.startswith("  checkpoint:") for line in status_lines(record))  # none read


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({}, True),
        ({"owner": 1}, False),  # a superseded attempt's claim
        ({"owner": 3}, False),  # a newer attempt's (the record is behind)
        ({"job_id": "j2"}, False),  # another job's pointer under this key
        ({"step": contract.MAX_CHECKPOINT_STEP}, True),
    ],
)
def test_a_pointer_shows_only_for_its_own_job_and_owner(
    change: dict[str, object], shown: bool
) -> None:
    live = checkpoints.of_pointer(pointer(**change), "j1", 2)
    assert (live is not None) is shown
    if live is not None:
        assert (live.job_id, live.attempt, live.written, live.at) == ("j1", 2, 3, NOW)
        assert (live.resumed_step, live.resumed_from_attempt) == (4, 1)


@pytest.mark.parametrize(
    "change",
    [{"step": contract.MAX_CHECKPOINT_STEP + 1}, {"step": -(10**400)}, {"resumed_step": 10**30},
     {"seq": 2**60}],
)
def test_numbers_no_json_reader_holds_exactly_are_no_pointer(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        pointer(**change)


def test_work_lost_of_a_job_is_its_attempts_summed() -> None:
    attempts = (ended(1, work_lost_s=1.5), ended(2), ended(3, work_lost_s=0.25))
    record = contract.JobRecord(spec=contract.JobSpec(id="j1", task="demo.sleep"), submitted_at=NOW,
                                updated_at=NOW, attempts=attempts)
    assert checkpoints.work_lost(record) == 1.75
    assert checkpoints.work_lost(record.model_copy(update={"attempts": (ended(1),)})) is None
