"""A queued job its queue's operator policy does not admit (JOBQ_QUEUE_POLICY, ``broker.policy``)
ends dead before another pod is created. Pure.

Intake refuses such a submission before it has a record; this is the second line, for a job
recorded before the policy changed or a dead job re-driven since: ``decide`` asks before it
starts each attempt. An attempt already running is left to finish.
"""

from __future__ import annotations

import datetime as dt

from broker import contract, policy
from broker.dispatcher.action import Action, dead_letter, event

Reason = contract.FailureReason


def check(job: contract.JobRecord, queue_policy: policy.QueuePolicy, *, now: dt.datetime) -> Action | None:
    """The action that ends ``job`` dead (reason ``refused``) if the policy refuses it, else None."""
    why = queue_policy.refusal(job.spec)
    if why is None:
        return None
    record = job.model_copy(
        update={
            "phase": contract.JobPhase.DEAD,
            "reason": Reason.REFUSED,
            "message": why,
            "not_before": None,
            "waiting_reason": "",
            "waiting_since": None,
            "finished_at": now,
            "updated_at": now,
        }
    )
    return Action(
        record=record,
        dead_letter=dead_letter(record, Reason.REFUSED, why, now=now),
        events=(event(record, contract.EventType.DEAD, now=now, reason=Reason.REFUSED, message=why),),
        summary="refused",
    )
