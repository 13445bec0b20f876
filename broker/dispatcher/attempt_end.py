"""How the current attempt ends: it failed (then the job retries or gives up) or it succeeded.

Pure transitions used by decide(); each returns the Action that writes the ended attempt.
"""

from __future__ import annotations

import datetime as dt
import random

from broker import contract, retry_policy
from broker.backends.base import PodState
from broker.dispatcher.action import Action, dead_letter, event
from broker.dispatcher.limits import Limits, policy_of
from broker.dispatcher.observation import Observed

Phase = contract.JobPhase
State = contract.AttemptState
Reason = contract.FailureReason


def replace_current(job: contract.JobRecord, attempt: contract.Attempt) -> tuple[contract.Attempt, ...]:
    return (*job.attempts[:-1], attempt)


def fail_current(
    job: contract.JobRecord,
    reason: contract.FailureReason,
    *,
    now: dt.datetime,
    rng: random.Random,
    limits: Limits,
    message: str = "",
    exit_code: int | None = None,
    delete: tuple[str, ...] = (),
    observed: contract.Attempt | None = None,
    log_tail: str = "",
) -> Action:
    """End the current attempt with ``reason`` and either schedule a retry or give up.

    ``observed`` is the current attempt as just observed (its node filled in, say), if that
    differs from the record's copy.
    """
    if observed is not None:
        job = job.model_copy(update={"attempts": replace_current(job, observed)})
    current = job.current
    assert current is not None
    ended = current.model_copy(
        update={
            "state": State.FAILED,
            "reason": reason,
            "exit_code": exit_code,
            "message": message,
            "log_tail": log_tail or current.log_tail,
            "waiting_reason": "",
            "finished_at": now,
        }
    )
    app_failures = job.app_failures + (0 if reason.is_disruption or reason == Reason.CANCELLED else 1)
    disruptions = job.disruptions + (1 if reason.is_disruption else 0)
    verdict = retry_policy.judge(
        reason, app_failures=app_failures, disruptions=disruptions, policy=policy_of(job, limits), rng=rng
    )
    avoid = job.avoid_nodes
    if reason == Reason.NODE_LOST and ended.node and ended.node not in avoid:
        avoid = (*avoid, ended.node)
    retries = dict(job.retries)
    base = dict(
        attempts=replace_current(job, ended),
        app_failures=app_failures,
        disruptions=disruptions,
        avoid_nodes=avoid,
        updated_at=now,
    )
    failed_event = event(
        job, contract.EventType.ATTEMPT_FAILED, now=now, attempt=ended, reason=reason, message=message
    )
    if verdict.retry:
        retries[reason.value] = retries.get(reason.value, 0) + 1
        record = job.model_copy(
            update={
                **base,
                "phase": Phase.QUEUED,
                "retries": retries,
                "not_before": now + dt.timedelta(seconds=verdict.delay_s),
            }
        )
        retry_event = event(
            record,
            contract.EventType.RETRY_SCHEDULED,
            now=now,
            attempt=ended,
            reason=reason,
            message=f"retry in {verdict.delay_s:.2f}s",
        )
        return Action(
            record=record,
            delete=delete,
            events=(failed_event, retry_event),
            requeue_after=verdict.delay_s,
            summary=f"retry:{reason}",
        )
    phase = Phase.CANCELLED if reason == Reason.CANCELLED else Phase.DEAD
    why = (
        message if reason == Reason.CANCELLED else f"{verdict.why}; last failure: {reason} {message}".strip()
    )
    record = job.model_copy(
        update={
            **base,
            "phase": phase,
            "reason": reason,
            "message": why,
            "finished_at": now,
            "not_before": None,
        }
    )
    kind = contract.EventType.CANCELLED if phase == Phase.CANCELLED else contract.EventType.DEAD
    dead = None
    if phase == Phase.DEAD:
        dead = dead_letter(record, reason, why, now=now)
    return Action(
        record=record,
        delete=delete,
        dead_letter=dead,
        events=(failed_event, event(record, kind, now=now, reason=reason, message=why)),
        summary=str(phase),
    )


def succeeded(
    job: contract.JobRecord,
    current: contract.Attempt,
    pod: PodState,
    seen: Observed,
    *,
    now: dt.datetime,
    rng: random.Random,
    limits: Limits,
) -> Action:
    """The attempt's pod succeeded (or its result is stored): the job succeeds, unless a task
    exited 0 without storing a result (an application error)."""
    if job.spec.task is not None and not seen.result_exists:
        return fail_current(
            job,
            Reason.APP_ERROR,
            observed=current,
            now=now,
            rng=rng,
            limits=limits,
            exit_code=0,
            delete=(pod.name,),
            message="exited 0 without storing a result",
        )
    done = current.model_copy(
        update={
            "state": State.SUCCEEDED,
            "exit_code": 0,
            "finished_at": now,
            "started_at": current.started_at or pod.started_at,
            "writer": seen.result_writer,
        }
    )
    record = job.model_copy(
        update={
            "phase": Phase.SUCCEEDED,
            "attempts": replace_current(job, done),
            "result_attempt": done.number,
            "finished_at": now,
            "updated_at": now,
            "not_before": None,
        }
    )
    return Action(
        record=record,
        delete=(pod.name,),
        summary="succeeded",
        events=(event(record, contract.EventType.SUCCEEDED, now=now, attempt=done),),
    )
