"""`jobq demo`'s figures can be non-zero: lost and duplicate results from hand-made records."""

from __future__ import annotations

import datetime as dt

from broker import contract
from submitter import demo

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def record(
    job_id: str, phase: contract.JobPhase, *, accepted: int | None = None, attempts: int = 1
) -> contract.JobRecord:
    return contract.JobRecord(
        spec=contract.JobSpec(id=job_id, task="demo.sleep"),
        phase=phase,
        result_attempt=accepted,
        attempts=tuple(
            contract.Attempt(number=n, pod=contract.pod_name(job_id, n), created_at=T0)
            for n in range(1, attempts + 1)
        ),
        submitted_at=T0,
        updated_at=T0,
    )


def succeeded(job_id: str, attempt: int) -> contract.JobEvent:
    return contract.JobEvent(job_id=job_id, type=contract.EventType.SUCCEEDED, attempt=attempt)


def test_clean_run() -> None:
    records = {"a": record("a", contract.JobPhase.SUCCEEDED, accepted=1)}
    summary = demo.summarize(records, [succeeded("a", 1)], killed=None, work_seconds=1.0)
    assert summary["lost"] == summary["duplicate_results"] == 0 and summary["succeeded"] == 1


def test_lost_is_every_acked_job_without_a_succeeded_record() -> None:
    records: dict[str, contract.JobRecord | None] = {
        "ok": record("ok", contract.JobPhase.SUCCEEDED, accepted=1),
        "none": None,  # acked, never recorded
        "running": record("running", contract.JobPhase.RUNNING),  # the wait ran out
        "dead": record("dead", contract.JobPhase.DEAD),
    }
    summary = demo.summarize(records, [], killed=None, work_seconds=1.0)
    assert summary["submitted"] == 4 and summary["lost"] == 3 and summary["dead"] == 1


def test_duplicates_are_jobs_with_two_accepted_attempts() -> None:
    records: dict[str, contract.JobRecord | None] = {
        "by-events": record("by-events", contract.JobPhase.SUCCEEDED, accepted=2, attempts=2),
        "by-watch": record("by-watch", contract.JobPhase.SUCCEEDED, accepted=2, attempts=2),
        "once": record("once", contract.JobPhase.SUCCEEDED, accepted=2, attempts=2),
    }
    events = [
        succeeded("by-events", 1),
        succeeded("by-events", 2),
        succeeded("once", 2),
        succeeded("once", 2),
    ]
    summary = demo.summarize(
        records, events, killed=None, work_seconds=1.0, accepted={"by-watch": {1, 2}, "once": {2}}
    )
    assert summary["duplicate_results"] == 2 and summary["lost"] == 0
