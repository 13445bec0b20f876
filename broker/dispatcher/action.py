"""Action: the one step decide() returns, and builders of the events and dead letter it carries.

``reconcile`` carries an Action out in a fixed order (the fence): dead letter, record
(compare-and-set), events, checkpoint objects no pointer will reference again, pod deletes, pod
create.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from broker import contract


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    record: contract.JobRecord | None = None
    """The new record to write (compare-and-set), if it changes; always small enough for one KV
    value (``JobRecord.fitted``)."""
    create: contract.PodSpec | None = None
    delete: tuple[str, ...] = ()
    events: tuple[contract.JobEvent, ...] = ()
    dead_letter: contract.DeadLetter | None = None
    requeue_after: float | None = None
    summary: str = "noop"
    drop_checkpoints: tuple[str, ...] = ()
    """Checkpoint objects no pointer will reference again, deleted once the record is written
    (``broker.dispatcher.checkpoints``)."""

    def __post_init__(self) -> None:
        if self.record is not None:
            object.__setattr__(self, "record", self.record.fitted())


def event(
    job: contract.JobRecord,
    kind: contract.EventType,
    *,
    now: dt.datetime,
    phase: contract.JobPhase | None = None,
    attempt: contract.Attempt | None = None,
    reason: contract.FailureReason | None = None,
    message: str = "",
) -> contract.JobEvent:
    """An event about ``job`` (in its phase unless ``phase`` says otherwise)."""
    return contract.JobEvent(
        job_id=job.spec.id,
        type=kind,
        phase=phase or job.phase,
        attempt=attempt.number if attempt else None,
        node=attempt.node if attempt else None,
        reason=reason,
        message=message,
        at=now,
    )


def dead_letter(
    record: contract.JobRecord, reason: contract.FailureReason, why: str, *, now: dt.datetime
) -> contract.DeadLetter:
    """The dead-letter record of a job that gave up: its spec (for a re-drive) and its attempts."""
    return contract.DeadLetter.of_original(
        record.spec.model_dump_json().encode(),
        job_id=record.spec.id,
        reason=reason,
        message=why,
        attempts=record.attempts,
        at=now,
    )
