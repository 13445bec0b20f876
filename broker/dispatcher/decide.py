"""decide(): given a job record and the pods we observe, the one next step. Pure, no I/O.

The dispatcher is level-triggered: it never trusts that it saw an event, only what it observes
now. ``decide`` compares desired state (the job record) with observed state (pods, node
readiness, heartbeats, result presence) and returns an Action; ``reconcile.apply`` carries it out
with the record written first (fencing), then events, then pod side effects.

Fencing: the record names the current attempt. Anything from another attempt (a pod, an exit, a
result) is stale: it is deleted or ignored, never accepted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections.abc import Mapping

from broker import contract, failure, retry_policy
from broker.backends.base import PodState
from broker.dispatcher.placement import Fit, Placement

Phase = contract.JobPhase
State = contract.AttemptState
Reason = contract.FailureReason


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    pods: tuple[PodState, ...]
    last_heartbeat: dt.datetime | None = None
    """Latest heartbeat of the current attempt's worker, if any arrived."""
    result_exists: bool = False
    """Whether the current attempt's own pod stored a result (looked up once its pod succeeded or
    looks lost); a result under its key written by anyone else does not count."""
    result_writer: contract.Writer | None = None
    """Who wrote that result (recorded on the attempt when it succeeds the job)."""
    queue_full: bool = False
    """The job's queue is at its concurrency limit."""
    ready_nodes: frozenset[str] | None = None
    """Names of the Ready nodes (None: unknown), to relax anti-affinity that would block forever."""
    node_lost_why: str = ""
    """Why the current pod's node counts as lost (its ``node_ready`` is False), in one line."""
    listening_since: dt.datetime | None = None
    """When this dispatcher began receiving heartbeats: silence is not counted from before it."""
    suspect_nodes: frozenset[str] = frozenset()
    """Nodes jobq judged lost that the cluster may still call Ready: no new attempt goes there."""
    placement: Placement | None = None
    """For a queued job: whether a node can take it now (None: not judged, go ahead)."""
    create_error: str = ""
    """The backend refused to place the current attempt's pod (no room after all, node refused)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    heartbeat_timeout_s: float = 10.0
    """An attempt whose worker is silent this long (after its first heartbeat) is lost."""
    startup_timeout_s: float = 60.0
    """How long a task attempt may take to send its first heartbeat (a busy node starts slowly)."""
    default_policy: contract.RetryPolicy = retry_policy.DEFAULT_POLICY
    queue_policies: Mapping[str, contract.RetryPolicy] = dataclasses.field(default_factory=dict)
    """Retry policy of jobs that bring none, per queue (else ``default_policy``)."""
    nats_url: str = ""
    """Given to pods so the worker can reach NATS."""
    image: str | None = None
    """Default container image for task pods (Kubernetes)."""
    extra_env: tuple[tuple[str, str], ...] = ()
    profiles: Mapping[str, contract.Resources] = dataclasses.field(default_factory=dict)
    """The operator's overrides of contract.PROFILES (JOBQ_RESOURCE_PROFILES), by profile name."""
    reschedule_on_node_loss: bool = True
    """False only for the chaos negative control: attempts on a lost node are left alone."""
    queue_pending_timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """pending_timeout_s of jobs that bring none, per queue (JOBQ_QUEUE_PENDING_TIMEOUTS)."""


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

    def __post_init__(self) -> None:
        if self.record is not None:
            object.__setattr__(self, "record", self.record.fitted())


def policy_of(job: contract.JobRecord, limits: Limits) -> contract.RetryPolicy:
    return job.spec.retry or limits.queue_policies.get(job.spec.queue) or limits.default_policy


def effective_avoid(
    job: contract.JobRecord, ready_nodes: frozenset[str] | None, suspects: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """Nodes the next attempt must avoid: those that lost this job, unless they are all the
    Ready nodes there are (then waiting would be forever; a node that is Ready again is used),
    and the nodes jobq currently judges lost (``suspects``), which the cluster may still call Ready."""
    own = () if ready_nodes and ready_nodes <= set(job.avoid_nodes) else job.avoid_nodes
    return (*own, *sorted(suspects - set(own)))


def requests(spec: contract.JobSpec, limits: Limits) -> contract.Resources:
    """The job's resources, or its profile's (``small`` if none) as the operator overrides it."""
    if spec.resources is not None:
        return spec.resources
    return limits.profiles.get(spec.profile or "small") or spec.requests


def pod_spec(
    job: contract.JobRecord,
    attempt: contract.Attempt,
    limits: Limits,
    *,
    ready_nodes: frozenset[str] | None = None,
    suspects: frozenset[str] = frozenset(),
) -> contract.PodSpec:
    spec = job.spec
    env = {k: v for k, v in limits.extra_env if k not in (contract.ENV_ARGS, contract.ENV_ARGS_FROM)}
    env.update(
        {
            contract.ENV_JOB_ID: spec.id,
            contract.ENV_ATTEMPT: str(attempt.number),
            contract.ENV_QUEUE: spec.queue,
            contract.ENV_POD: attempt.pod,  # the writer identity the worker stamps on its outputs
        }
    )
    if limits.nats_url:
        env[contract.ENV_NATS_URL] = limits.nats_url
    if spec.task is not None:
        env[contract.ENV_TASK] = spec.task
        args = json.dumps(spec.args, separators=(",", ":"), sort_keys=True)  # ASCII: 1 byte a char
        if len(args) <= contract.MAX_INLINE_ARGS_BYTES:
            env[contract.ENV_ARGS] = args
        else:  # too big for one environment string: the runner reads them from the job record
            env[contract.ENV_ARGS_FROM] = contract.ARGS_FROM_RECORD
        command: tuple[str, ...] = ("jobq-runner",)
    else:
        command = spec.command or ()
    return contract.PodSpec(
        name=attempt.pod,
        job_id=spec.id,
        attempt=attempt.number,
        queue=spec.queue,
        command=command,
        env=env,
        image=spec.image or limits.image,
        resources=requests(spec, limits),
        avoid_nodes=effective_avoid(job, ready_nodes, suspects),
    )


def _event(
    job: contract.JobRecord,
    kind: contract.EventType,
    *,
    now: dt.datetime,
    phase: contract.JobPhase | None = None,
    attempt: contract.Attempt | None = None,
    reason: contract.FailureReason | None = None,
    message: str = "",
) -> contract.JobEvent:
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


def _dead_letter(
    record: contract.JobRecord, reason: Reason, why: str, *, now: dt.datetime
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


def _replace_current(job: contract.JobRecord, attempt: contract.Attempt) -> tuple[contract.Attempt, ...]:
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
        job = job.model_copy(update={"attempts": _replace_current(job, observed)})
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
        attempts=_replace_current(job, ended),
        app_failures=app_failures,
        disruptions=disruptions,
        avoid_nodes=avoid,
        updated_at=now,
    )
    failed_event = _event(
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
        retry_event = _event(
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
        dead = _dead_letter(record, reason, why, now=now)
    return Action(
        record=record,
        delete=delete,
        dead_letter=dead,
        events=(failed_event, _event(record, kind, now=now, reason=reason, message=why)),
        summary=str(phase),
    )


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
                _event(
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
                _event(
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
        if job.not_before is not None and job.not_before > now:
            return Action(requeue_after=(job.not_before - now).total_seconds(), summary="backoff")
        if seen.queue_full:
            return Action(requeue_after=1.0, summary="queue_full")
        if seen.placement is not None and seen.placement.fit != Fit.NOW:
            return _wait_for_node(job, seen.placement, now=now, limits=limits)
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
            create=pod_spec(
                record, attempt, limits, ready_nodes=seen.ready_nodes, suspects=seen.suspect_nodes
            ),
            requeue_after=1.0,
            events=(_event(record, contract.EventType.ATTEMPT_CREATED, now=now, attempt=attempt),),
            summary="create_attempt",
        )

    assert current is not None, "a running job has an attempt"
    pod = next((p for p in seen.pods if p.name == current.pod), None)
    if pod is None:
        if current.state == State.CREATING and seen.create_error:
            # The backend could not place the pod after all: the attempt never ran. Take it back
            # and wait in the queue (its number is reused; no pod of that name exists).
            back = job.model_copy(update={"phase": Phase.QUEUED, "attempts": job.attempts[:-1]})
            return _wait_for_node(
                back, Placement(Fit.LATER, seen.create_error), now=now, limits=limits, changed=True
            )
        if current.state == State.CREATING:
            return Action(
                create=pod_spec(
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
        return _succeeded(job, current, pod, seen, now=now, rng=rng, limits=limits)
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
        return _succeeded(job, current, pod, seen, now=now, rng=rng, limits=limits)
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
    wait = limits.heartbeat_timeout_s / 2
    if job.spec.timeout_s is not None:
        wait = min(wait, max(0.1, job.spec.timeout_s - (now - started).total_seconds()))
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
    record = job.model_copy(update={"attempts": _replace_current(job, updated), "updated_at": now})
    events: tuple[contract.JobEvent, ...] = ()
    if state == State.RUNNING and current.state != State.RUNNING:
        events = (_event(record, contract.EventType.ATTEMPT_STARTED, now=now, attempt=updated),)
    return Action(record=record, events=events, requeue_after=wait, summary=f"attempt_{state}")


def _succeeded(
    job: contract.JobRecord,
    current: contract.Attempt,
    pod: PodState,
    seen: Observed,
    *,
    now: dt.datetime,
    rng: random.Random,
    limits: Limits,
) -> Action:
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
            "attempts": _replace_current(job, done),
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
        events=(_event(record, contract.EventType.SUCCEEDED, now=now, attempt=done),),
    )


def queued_since(job: contract.JobRecord) -> dt.datetime:
    """When the job last became ready to start: submitted, or its last attempt ended, or its
    retry backoff ran out, whichever is latest."""
    last = job.current.finished_at if job.current is not None else None
    since = max(job.submitted_at, last or job.submitted_at)
    return max(since, job.not_before) if job.not_before is not None else since


def _wait_for_node(
    job: contract.JobRecord, placement: Placement, *, now: dt.datetime, limits: Limits, changed: bool = False
) -> Action:
    """Keep a job that no node can take now ``queued``; give up after its pending timeout. No
    timer otherwise: capacity changes wake it (docs/design/dispatcher.md).

    Waiting for room (LATER) is a backlog's normal state: nothing is written. A job that no node
    can ever fit (NEVER) is told in its record (``waiting_reason``) and by one ``waiting`` event."""
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
        dead = _dead_letter(record, Reason.UNSCHEDULABLE, why, now=now)
        return Action(
            record=record,
            dead_letter=dead,
            events=(
                _event(record, contract.EventType.DEAD, now=now, reason=Reason.UNSCHEDULABLE, message=why),
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
    events = (_event(record, contract.EventType.WAITING, now=now, message=placement.reason),) if never else ()
    return Action(record=record, requeue_after=requeue, events=events, summary=summary)
