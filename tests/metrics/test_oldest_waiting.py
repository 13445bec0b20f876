"""The oldest-waiting tracker (pure logic): ages per queue without scanning every record."""

from __future__ import annotations

import datetime as dt

from broker import contract
from broker.metrics.waiting import OldestWaiting

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def record(
    job_id: str, *, queue: str = "q", phase: str = "queued", at: float = 0.0, **extra: object
) -> contract.JobRecord:
    return contract.JobRecord.model_validate(
        {
            "spec": {"id": job_id, "queue": queue, "task": "demo.sleep"},
            "phase": phase,
            "submitted_at": T0 + dt.timedelta(seconds=at),
            "updated_at": T0 + dt.timedelta(seconds=at),
            **extra,
        }
    )


def test_oldest_queued_job_per_queue() -> None:
    oldest = OldestWaiting()
    for r in (record("a", at=0), record("b", at=5), record("c", queue="other", at=8)):
        oldest.on_record(None, r)
    assert oldest.ages(T0 + dt.timedelta(seconds=10)) == {"q": 10.0, "other": 2.0}
    oldest.on_record(record("a", at=0), record("a", at=0, phase="running"))
    assert oldest.ages(T0 + dt.timedelta(seconds=10)) == {"q": 5.0, "other": 2.0}
    oldest.on_record(None, record("b", at=5, phase="succeeded"))
    oldest.on_record(None, record("c", queue="other", at=8, phase="dead"))
    assert oldest.ages(T0 + dt.timedelta(seconds=10)) == {"q": 0.0, "other": 0.0}


def test_a_job_in_backoff_waits_from_its_not_before() -> None:
    oldest = OldestWaiting()
    later = T0 + dt.timedelta(seconds=30)
    oldest.on_record(None, record("a", at=0, not_before=later.isoformat()))
    assert oldest.ages(T0 + dt.timedelta(seconds=10)) == {"q": 0.0}  # not runnable yet
    assert oldest.ages(T0 + dt.timedelta(seconds=40)) == {"q": 10.0}


def test_stale_heap_entries_are_compacted() -> None:
    oldest = OldestWaiting()
    for i in range(1000):  # each job queued, then taken: only stale entries would remain
        oldest.on_record(None, record(f"j{i}", at=i))
        oldest.on_record(None, record(f"j{i}", at=i, phase="running"))
    oldest.on_record(None, record("last", at=2000))
    assert len(oldest._heaps["q"]) <= 2 * oldest.waiting("q") + 65
    assert oldest.ages(T0 + dt.timedelta(seconds=2001)) == {"q": 1.0}
