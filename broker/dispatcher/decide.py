"""decide(): given a job record and the pods we observe, the one next step. Pure, no I/O.

The dispatcher is level-triggered: it never trusts that it saw an event, only what it observes
now. ``decide`` compares desired state (the job record) with observed state (``Observed``: pods,
node readiness, heartbeats, result presence, the backend's answer to the last pod create) and
returns an ``Action``; ``reconcile`` carries it out with the record written first (fencing), then
events, then pod side effects. One decision per pass: what a side effect meets (a create the
backend refuses) is observed by the next pass and decided there.

Fencing: the record names the current attempt. Anything from another attempt (a pod, an exit, a
result) is stale: it is deleted or ignored, never accepted.

The transitions live beside this module: ``attempt_end`` (an attempt fails or succeeds),
``waiting`` (no node can take a queued job now); the pod spec is built by ``pod_spec``.
"""

from __future__ import annotations

import datetime as dt
import random

from broker import contract, failure
from broker.backends.base import PodState
from broker.dispatcher import pod_spec, refusal
from broker.dispatcher.action import Action, event
from broker.dispatcher.attempt_end import fail_current, replace_current, succeeded
from broker.dispatcher.limits import Limits, policy_of
from broker.dispatcher.observation import CreateFailure, CreateOutcome, Observed
from broker.dispatcher.placement import Fit, Placement
from broker.dispatcher.waiting import wait_for_node
from broker.dispatcher.waiting_room import QUEUE_FULL

Phase = contract.JobPhase
State = contract.AttemptState
Reason = contract.FailureReason


def _stale_pods(job: contract.JobRecord, pods: tuple[PodState, ...]) -> list[PodState]:
    """Pods of superseded attempts, and second copies of the current attempt on another node."""
    current = job.current
    return [
        p
        for p in pods
        if current is None
        or p.attempt != current.number
        or (current.node is not None and p.node is not None and p.node != current.node)
    ]


def _needs_delete(pod: PodState) -> bool:
    """A pod being deleted already needs nothing more while its node can finish the deletion;
    on a node judged lost nothing will, so it is deleted again (the reconciler forces it)."""
    return not pod.terminating or not pod.node_ready


def decide(
    job: contract.JobRecord, seen: Observed, *, now: dt.datetime, rng: random.Random, limits: Limits
) -> Action:
    stale = [p for p in _stale_pods(job, seen.pods) if _needs_delete(p)]
    cleanup = None
    if stale:
        cleanup = Action(
            delete=tuple(p.name for p in stale),
            summary="delete_stale",
            events=tuple(
                event(
                    job,
                    contract.EventType.STALE,
                    now=now,
                    message=f"pod {p.name} of superseded attempt {p.attempt} on {p.node} ({p.phase}"
                    f"{'' if p.exit_code is None else f', exit {p.exit_code}'}) ignored and deleted",
                )
                for p in stale
                if not p.terminating  # said once, when it is first deleted
            ),
        )
    stale_names = cleanup.delete if cleanup else ()

    if job.phase.is_terminal:
        leftovers = tuple(p.name for p in seen.pods if p.name not in stale_names and _needs_delete(p))
        return cleanup or Action(delete=leftovers, summary="cleanup" if leftovers else "noop")

    current = job.current
    if job.cancel_requested:
        if current is not None and not current.state.is_final:
            return fail_current(
                job,
                Reason.CANCELLED,
                now=now,
                rng=rng,
                limits=limits,
                message="cancelled by request",
                delete=(current.pod, *stale_names),
            )
        record = job.model_copy(
            update={
                "phase": Phase.CANCELLED,
                "reason": Reason.CANCELLED,
                "message": "cancelled by request",
                "finished_at": now,
                "updated_at": now,
            }
        )
        return Action(
            record=record,
            delete=stale_names,
            summary="cancelled",
            events=(
                event(
                    record,
                    contract.EventType.CANCELLED,
                    now=now,
                    reason=Reason.CANCELLED,
                    message="cancelled by request",
                ),
            ),
        )

    if cleanup is not None:
        return cleanup

    if job.phase == Phase.QUEUED:
        return _queued(job, seen, now=now, limits=limits)

    assert current is not None, "a running job has an attempt"
    pod = next((p for p in seen.pods if p.name == current.pod), None)
    refused = seen.create_outcome
    if (
        refused is not None
        and refused.attempt == current.number
        and current.state == State.CREATING
        and (pod is None or refused.failure != CreateFailure.UNSCHEDULABLE)
    ):
        return _create_failed(job, current, refused, now=now, rng=rng, limits=limits)
    if pod is None:
        if current.state == State.CREATING:
            return Action(
                create=pod_spec.build(
                    job, current, limits, ready_nodes=seen.ready_nodes, suspects=seen.suspect_nodes
                ),
                requeue_after=1.0,
                summary="create_pod",
            )
        return fail_current(
            job, Reason.DELETED, now=now, rng=rng, limits=limits, message=f"pod {current.pod} disappeared"
        )
    if current.node is None or current.node != pod.node:
        current = current.model_copy(update={"node": pod.node})
    if seen.result_exists and job.spec.task is not None and pod.phase != contract.PodPhase.FAILED:
        # The attempt stored its result: done, even if its node could not report the exit.
        return succeeded(job, current, pod, seen, now=now, rng=rng, limits=limits)
    if not pod.node_ready:
        if not limits.reschedule_on_node_loss:
            return Action(requeue_after=1.0, summary="node_lost_ignored")
        return fail_current(
            job,
            Reason.NODE_LOST,
            observed=current,
            now=now,
            rng=rng,
            limits=limits,
            message=seen.node_lost_why or f"node {pod.node} stopped heartbeating",
            delete=(pod.name,),
        )
    if pod.phase == contract.PodPhase.SUCCEEDED:
        return succeeded(job, current, pod, seen, now=now, rng=rng, limits=limits)
    if pod.phase == contract.PodPhase.FAILED:
        reason = failure.classify_exit(
            exit_code=pod.exit_code,
            pod_reason=pod.reason,
            policy=policy_of(job, limits),
            has_task=job.spec.task is not None,
        )
        message = f"exit code {pod.exit_code} ({pod.reason})"
        if reason == Reason.START_ERROR:  # no output exists: the message is the OS error
            message = f"{message}: {pod.message}" if pod.message else message
        return fail_current(
            job,
            reason,
            observed=current,
            now=now,
            rng=rng,
            limits=limits,
            exit_code=pod.exit_code,
            message=message,
            delete=(pod.name,),
            log_tail="" if reason == Reason.START_ERROR else pod.message,
        )
    return _running(job, current, pod, seen, now=now, rng=rng, limits=limits)


def _queued(job: contract.JobRecord, seen: Observed, *, now: dt.datetime, limits: Limits) -> Action:
    """A queued job starts its next attempt, unless it must wait (backoff, queue limit, no node)
    or its queue's policy no longer admits it (it ends dead, reason refused)."""
    if (refused := refusal.check(job, limits.queue_policy, now=now)) is not None:
        return refused
    if job.not_before is not None and job.not_before > now:
        return Action(requeue_after=(job.not_before - now).total_seconds(), summary="backoff")
    if seen.queue_full:  # no timer: a job of its queue that stops running wakes it
        return Action(summary=QUEUE_FULL)
    if seen.placement is not None and seen.placement.fit != Fit.NOW:
        return wait_for_node(job, seen.placement, now=now, limits=limits)
    number = len(job.attempts) + 1
    attempt = contract.Attempt(number=number, pod=contract.pod_name(job.spec.id, number), created_at=now)
    record = job.model_copy(
        update={
            "phase": Phase.RUNNING,
            "attempts": (*job.attempts, attempt),
            "not_before": None,
            "waiting_reason": "",
            "waiting_since": None,
            "updated_at": now,
        }
    )
    return Action(
        record=record,
        create=pod_spec.build(
            record, attempt, limits, ready_nodes=seen.ready_nodes, suspects=seen.suspect_nodes
        ),
        requeue_after=1.0,
        events=(event(record, contract.EventType.ATTEMPT_CREATED, now=now, attempt=attempt),),
        summary="create_attempt",
    )


def _create_failed(
    job: contract.JobRecord,
    current: contract.Attempt,
    refused: CreateOutcome,
    *,
    now: dt.datetime,
    rng: random.Random,
    limits: Limits,
) -> Action:
    """The backend did not create the current attempt's pod on the last pass."""
    if refused.failure == CreateFailure.UNSCHEDULABLE:
        # The backend could not place the pod after all: the attempt never ran. Take it back
        # and wait in the queue (its number is reused; no pod of that name exists).
        back = job.model_copy(update={"phase": Phase.QUEUED, "attempts": job.attempts[:-1]})
        return wait_for_node(
            back, Placement(Fit.LATER, refused.message), now=now, limits=limits, changed=True
        )
    if refused.failure == CreateFailure.UNCERTAIN:
        # The node never answered: the pod may run there, so the attempt is lost with that node.
        return fail_current(
            job,
            Reason.NODE_LOST,
            observed=current.model_copy(update={"node": refused.node}),
            now=now,
            rng=rng,
            limits=limits,
            message=refused.message,
            delete=(current.pod,),
        )
    return fail_current(job, Reason.DISPATCH_ERROR, now=now, rng=rng, limits=limits, message=refused.message)


def _running(
    job: contract.JobRecord,
    current: contract.Attempt,
    pod: PodState,
    seen: Observed,
    *,
    now: dt.datetime,
    rng: random.Random,
    limits: Limits,
) -> Action:
    started = current.started_at or pod.started_at or now
    if job.spec.timeout_s is not None and (now - started).total_seconds() > job.spec.timeout_s:
        return fail_current(
            job,
            Reason.TIMEOUT,
            observed=current,
            now=now,
            rng=rng,
            limits=limits,
            delete=(pod.name,),
            message=f"ran longer than timeout_s={job.spec.timeout_s}",
        )
    if job.spec.task is not None and pod.phase == contract.PodPhase.RUNNING:
        # Silence is counted from the last heartbeat, or from when we began to listen (a restarted
        # dispatcher has heard nothing yet). An attempt that has run past the startup allowance
        # before we listened was beating already, so it gets the heartbeat timeout, not the startup one.
        listening = seen.listening_since or started
        since = seen.last_heartbeat or max(started, listening)
        beating_before = (listening - started).total_seconds() > limits.startup_timeout_s
        silent_s = (now - since).total_seconds()
        allowed_s = (
            limits.heartbeat_timeout_s if seen.last_heartbeat or beating_before else limits.startup_timeout_s
        )
        if silent_s > allowed_s:
            return fail_current(
                job,
                Reason.HEARTBEAT_LOST,
                observed=current,
                now=now,
                rng=rng,
                limits=limits,
                delete=(pod.name,),
                message=f"no heartbeat for {silent_s:.1f}s (allowed {allowed_s}s)",
            )
    # A task attempt's silence needs a clock; anything else about a running pod (it ends, its node
    # is lost) reaches us as a backend event, so a command job without a timeout needs no timer.
    wait = limits.heartbeat_timeout_s / 2 if job.spec.task is not None else None
    if job.spec.timeout_s is not None:
        left = max(0.1, job.spec.timeout_s - (now - started).total_seconds())
        wait = left if wait is None else min(wait, left)
    state = State.RUNNING if pod.phase == contract.PodPhase.RUNNING else State.PENDING
    waiting = pod.message if state == State.PENDING else ""
    if current.state == state and current.waiting_reason == waiting and current == job.current:
        return Action(requeue_after=wait, summary="watching")
    updated = current.model_copy(
        update={
            "state": state,
            "waiting_reason": waiting,
            "started_at": current.started_at or (pod.started_at or now if state == State.RUNNING else None),
        }
    )
    record = job.model_copy(update={"attempts": replace_current(job, updated), "updated_at": now})
    events: tuple[contract.JobEvent, ...] = ()
    if state == State.RUNNING and current.state != State.RUNNING:
        events = (event(record, contract.EventType.ATTEMPT_STARTED, now=now, attempt=updated),)
    return Action(record=record, events=events, requeue_after=wait, summary=f"attempt_{state}")
