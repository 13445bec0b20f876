"""A queued job that no node can take now: it waits (told in its record when it can never fit
as things stand) until capacity changes, or gives up after its pending timeout. Pure."""

from __future__ import annotations

import datetime as dt

from broker import contract
from broker.dispatcher.action import Action, dead_letter, event
from broker.dispatcher.limits import Limits
from broker.dispatcher.placement import Fit, Placement

Phase = contract.JobPhase
Reason = contract.FailureReason


def queued_since(job: contract.JobRecord) -> dt.datetime:
    """When the job last became ready to start: submitted, or its last attempt ended, or its
    retry backoff ran out, whichever is latest."""
    last = job.current.finished_at if job.current is not None else None
    since = max(job.submitted_at, last or job.submitted_at)
    return max(since, job.not_before) if job.not_before is not None else since


def wait_for_node(
    job: contract.JobRecord, placement: Placement, *, now: dt.datetime, limits: Limits, changed: bool = False
) -> Action:
    """Keep a job that no node can take now ``queued``; give up after its pending timeout. No
    timer otherwise: capacity changes wake it (docs/design/dispatcher.md).

    Waiting for room (LATER) is a backlog's normal state: nothing is written. A job that no node
    can ever fit (NEVER) is told in its record (``waiting_reason``) and by one ``waiting`` event.
    ``changed``: ``job`` differs from the stored record already, so it is written whatever the fit."""
    since = job.waiting_since or queued_since(job)
    timeout = job.spec.pending_timeout_s or limits.queue_pending_timeouts.get(job.spec.queue)
    waited = (now - since).total_seconds()
    if timeout is not None and waited >= timeout:
        why = f"{placement.reason}; waited {waited:.0f}s (pending_timeout_s={timeout:g})"
        record = job.model_copy(
            update={
                "phase": Phase.DEAD,
                "reason": Reason.UNSCHEDULABLE,
                "message": why,
                "waiting_reason": "",
                "finished_at": now,
                "updated_at": now,
            }
        )
        return Action(
            record=record,
            dead_letter=dead_letter(record, Reason.UNSCHEDULABLE, why, now=now),
            events=(
                event(record, contract.EventType.DEAD, now=now, reason=Reason.UNSCHEDULABLE, message=why),
            ),
            summary="dead",
        )
    requeue = None if timeout is None else timeout - waited
    summary = f"waiting:{placement.fit}"
    never = placement.fit == Fit.NEVER
    if not changed and (not never or (job.waiting_reason == placement.reason and job.waiting_since)):
        return Action(requeue_after=requeue, summary=summary)
    record = job.model_copy(
        update={
            "waiting_reason": placement.reason,
            "waiting_since": since if never else None,
            "updated_at": now,
        }
    )
    events = (event(record, contract.EventType.WAITING, now=now, message=placement.reason),) if never else ()
    return Action(record=record, requeue_after=requeue, events=events, summary=summary)
