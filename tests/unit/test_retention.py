"""Retention's pure logic (docs/design/retention.md): which retention a job gets, when it is due,
and the heap of expiry times the sweeper follows. The deletes themselves are tested against a
real nats-server in tests/integration/test_retention.py."""

from __future__ import annotations

import datetime as dt

import pydantic
import pytest

from broker import contract, settings
from broker.dispatcher.index import JobIndex
from broker.dispatcher.retention import ExpiryHeap, RetentionPolicy

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = 86400.0


def record(
    job_id: str,
    *,
    phase: contract.JobPhase = contract.JobPhase.SUCCEEDED,
    finished_s: float = 0.0,
    queue: str = "default",
    retention_s: float | None = None,
) -> contract.JobRecord:
    spec = contract.JobSpec(id=job_id, task="demo.sleep", queue=queue, retention_s=retention_s)
    finished = T0 + dt.timedelta(seconds=finished_s) if phase.is_terminal else None
    return contract.JobRecord(spec=spec, phase=phase, submitted_at=T0, updated_at=T0, finished_at=finished)


def test_the_job_wins_over_its_queue_which_wins_over_the_default() -> None:
    policy = RetentionPolicy(default_s=7 * DAY, queues={"scratch": 3600})
    assert policy.retention_s(record("a").spec) == 7 * DAY
    assert policy.retention_s(record("b", queue="scratch").spec) == 3600
    assert policy.retention_s(record("c", queue="scratch", retention_s=30 * DAY).spec) == 30 * DAY


@pytest.mark.parametrize(
    "phase", [contract.JobPhase.SUCCEEDED, contract.JobPhase.DEAD, contract.JobPhase.CANCELLED]
)
def test_a_finished_job_is_due_its_retention_after_it_ended(phase: contract.JobPhase) -> None:
    due = RetentionPolicy(default_s=DAY).due_at(record("a", phase=phase, finished_s=10))
    assert due == T0 + dt.timedelta(seconds=10 + DAY)


@pytest.mark.parametrize("phase", [contract.JobPhase.QUEUED, contract.JobPhase.RUNNING])
def test_an_unfinished_job_is_never_due(phase: contract.JobPhase) -> None:
    assert RetentionPolicy(default_s=1).due_at(record("a", phase=phase)) is None


def test_a_job_whose_deletion_began_is_due_at_once() -> None:
    marked = record("a", retention_s=30 * DAY).model_copy(update={"expired_at": T0})
    assert RetentionPolicy().due_at(marked) == T0


def test_the_heap_gives_due_jobs_earliest_first_and_follows_changes() -> None:
    woken: list[int] = []
    heap = ExpiryHeap(RetentionPolicy(default_s=100), on_earlier=lambda: woken.append(1))
    index = JobIndex()
    index.subscribe(heap.changed)
    index.subscribe_removed(heap.removed)
    index.put(record("late", finished_s=50), 1)
    index.put(record("early", finished_s=0), 2)
    index.put(record("running", phase=contract.JobPhase.RUNNING), 3)
    index.put(record("gone", finished_s=1), 4)
    index.put(record("redriven", phase=contract.JobPhase.DEAD, finished_s=2), 5)
    index.put(record("redriven", phase=contract.JobPhase.QUEUED), 6)  # re-driven: never due now
    index.remove("gone")
    assert len(heap) == 2 and len(woken) == 2  # late came first, then early came earlier
    assert heap.earliest() == T0 + dt.timedelta(seconds=100)
    assert heap.take_due(T0 + dt.timedelta(seconds=99), most=10) == []
    assert heap.take_due(T0 + dt.timedelta(seconds=1000), most=10) == ["early", "late"]
    assert heap.earliest() is None and len(heap) == 0


def test_taking_costs_the_due_jobs_not_the_kept_ones() -> None:
    heap = ExpiryHeap(RetentionPolicy(default_s=DAY))
    for n in range(10_000):  # kept for a day
        heap.changed(None, record(f"kept-{n}", finished_s=n))
    for n in range(3):
        heap.changed(None, record(f"short-{n}", finished_s=n, retention_s=1))
    assert heap.take_due(T0 + dt.timedelta(seconds=60), most=100) == ["short-0", "short-1", "short-2"]
    assert len(heap) == 10_000


def test_stale_entries_do_not_pile_up() -> None:
    heap = ExpiryHeap(RetentionPolicy(default_s=DAY))
    for n in range(1000):  # one job whose expiry keeps moving
        heap.set("a", T0 + dt.timedelta(seconds=n))
    assert len(heap) == 1 and len(heap._heap) <= 2 * len(heap) + 65


def test_a_job_may_ask_for_a_retention_within_bounds() -> None:
    with pytest.raises(pydantic.ValidationError):
        contract.JobSpec(id="a", task="demo.sleep", retention_s=0)
    with pytest.raises(pydantic.ValidationError):
        contract.JobSpec(id="a", task="demo.sleep", retention_s=contract.MAX_RETENTION_S + 1)


def test_retention_settings() -> None:
    config = settings.Settings.from_env(
        {
            "JOBQ_RETENTION_S": "3600",
            "JOBQ_QUEUE_RETENTION": "scratch=60",
            "JOBQ_IDEMPOTENCY_WINDOW_S": "86400",
        }
    )
    assert config.dispatcher.retention_s == 3600 and config.dispatcher.queue_retention == {"scratch": 60}
    assert config.dispatcher.idempotency_window_s == 86400
    default = settings.Settings.from_env({}).dispatcher
    assert default.retention_s == 7 * DAY and default.idempotency_window_s == 7 * DAY
    for env in (
        {"JOBQ_RETENTION_S": "0"},
        {"JOBQ_QUEUE_RETENTION": "scratch=1e9"},
        {"JOBQ_IDEMPOTENCY_WINDOW_S": "1"},
    ):
        with pytest.raises(settings.SettingsError, match=next(iter(env))):
            settings.Settings.from_env(env)
