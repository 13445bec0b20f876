"""decide(): given a job record and observed pods, the expected next step (table tests)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

from broker import contract
from broker.backends.base import PodState
from broker.dispatcher.decide import decide
from broker.dispatcher.limits import Limits
from broker.dispatcher.observation import CreateFailure, CreateOutcome, Observed
from broker.dispatcher.placement import Fit, Placement

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
LIMITS = Limits(heartbeat_timeout_s=10)
Phase, State, Reason, Pod = (
    contract.JobPhase,
    contract.AttemptState,
    contract.FailureReason,
    contract.PodPhase,
)


def job(
    *,
    phase: Phase = Phase.QUEUED,
    attempts: tuple[contract.Attempt, ...] = (),
    task: str | None = "demo.sleep",
    **fields: object,
) -> contract.JobRecord:
    spec_fields: dict[str, object] = {
        "id": "j1",
        "retry": contract.RetryPolicy(max_attempts=2, non_retryable_exit_codes=(42,)),
    }
    if task:
        spec_fields["task"] = task
    else:
        spec_fields["command"] = ("true",)
    spec_fields.update({k: v for k, v in fields.items() if k in ("timeout_s",)})
    record_fields = {k: v for k, v in fields.items() if k not in ("timeout_s",)}
    return contract.JobRecord(
        spec=contract.JobSpec(**spec_fields),
        phase=phase,
        attempts=attempts,  # type: ignore[arg-type]
        submitted_at=NOW,
        updated_at=NOW,
        **record_fields,
    )  # type: ignore[arg-type]


def attempt(
    n: int = 1,
    *,
    state: State = State.RUNNING,
    node: str | None = "node-1",
    started: dt.datetime | None = NOW - dt.timedelta(seconds=5),
) -> contract.Attempt:
    return contract.Attempt(
        number=n,
        pod=contract.pod_name("j1", n),
        state=state,
        node=node,
        created_at=NOW - dt.timedelta(seconds=6),
        started_at=started,
    )


def pod(
    n: int = 1,
    *,
    phase: Pod = Pod.RUNNING,
    node: str = "node-1",
    ready: bool = True,
    exit_code: int | None = None,
    reason: str = "",
) -> PodState:
    return PodState(
        name=contract.pod_name("j1", n),
        job_id="j1",
        attempt=n,
        phase=phase,
        node=node,
        node_ready=ready,
        exit_code=exit_code,
        reason=reason,
        started_at=NOW - dt.timedelta(seconds=5),
    )


def run(record: contract.JobRecord, *pods: PodState, **observed: object):  # type: ignore[no-untyped-def]
    seen = Observed(pods=pods, last_heartbeat=observed.pop("heartbeat", NOW), **observed)  # type: ignore[arg-type]
    return decide(record, seen, now=NOW, rng=random.Random(0), limits=LIMITS)


def test_queued_job_gets_a_fenced_attempt_and_a_pod() -> None:
    action = run(job())
    assert action.record is not None and action.record.phase == Phase.RUNNING
    assert action.record.current is not None and action.record.current.state == State.CREATING
    assert action.create is not None and action.create.name == "job-j1-1"
    assert action.create.env["JOBQ_ATTEMPT"] == "1"


def test_backoff_and_queue_limits_hold_a_queued_job() -> None:
    later = job(not_before=NOW + dt.timedelta(seconds=3))
    assert run(later).requeue_after == 3.0 and run(later).create is None
    assert run(job(), queue_full=True).create is None


def test_creating_attempt_without_pod_creates_it_again_idempotently() -> None:
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(state=State.CREATING, node=None, started=None),)))
    assert action.create is not None and action.create.name == "job-j1-1" and action.record is None


def test_pod_running_marks_attempt_running() -> None:
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(state=State.PENDING),)), pod())
    assert action.record is not None and action.record.current is not None
    assert action.record.current.state == State.RUNNING
    assert [e.type for e in action.events] == [contract.EventType.ATTEMPT_STARTED]


def test_success_needs_a_stored_result() -> None:
    running = job(phase=Phase.RUNNING, attempts=(attempt(),))
    ok = run(running, pod(phase=Pod.SUCCEEDED, exit_code=0), result_exists=True)
    assert ok.record is not None and ok.record.phase == Phase.SUCCEEDED and ok.record.result_attempt == 1
    missing = run(running, pod(phase=Pod.SUCCEEDED, exit_code=0), result_exists=False)
    assert missing.record is not None and missing.record.current is not None
    assert missing.record.current.reason == Reason.APP_ERROR


def test_command_jobs_succeed_on_exit_zero() -> None:
    action = run(
        job(phase=Phase.RUNNING, attempts=(attempt(),), task=None), pod(phase=Pod.SUCCEEDED, exit_code=0)
    )
    assert action.record is not None and action.record.phase == Phase.SUCCEEDED


def test_app_error_retries_with_backoff_then_goes_dead() -> None:
    first = run(
        job(phase=Phase.RUNNING, attempts=(attempt(),)), pod(phase=Pod.FAILED, exit_code=1, reason="Error")
    )
    assert first.record is not None and first.record.phase == Phase.QUEUED and first.record.app_failures == 1
    assert first.record.retries == {"app_error": 1}
    assert first.delete == ("job-j1-1",)
    second = run(
        job(phase=Phase.RUNNING, attempts=(attempt(1, state=State.FAILED), attempt(2)), app_failures=1),
        pod(2, phase=Pod.FAILED, exit_code=1, reason="Error"),
    )
    assert second.record is not None and second.record.phase == Phase.DEAD
    assert second.dead_letter is not None and len(second.dead_letter.attempts) == 2


def test_non_retryable_exit_code_goes_straight_to_dead() -> None:
    action = run(
        job(phase=Phase.RUNNING, attempts=(attempt(),)), pod(phase=Pod.FAILED, exit_code=42, reason="Error")
    )
    assert action.record is not None and action.record.phase == Phase.DEAD
    assert action.record.reason == Reason.NON_RETRYABLE


def test_oom_is_classified() -> None:
    action = run(
        job(phase=Phase.RUNNING, attempts=(attempt(),)),
        pod(phase=Pod.FAILED, exit_code=137, reason="OOMKilled"),
    )
    assert action.record is not None and action.record.current is not None
    assert action.record.current.reason == Reason.OOM


def test_node_loss_reschedules_at_once_elsewhere_without_spending_the_retry_budget() -> None:
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(),), app_failures=1), pod(ready=False))
    record = action.record
    assert record is not None and record.phase == Phase.QUEUED
    assert record.not_before == NOW and action.requeue_after == 0
    assert record.app_failures == 1 and record.disruptions == 1
    assert record.avoid_nodes == ("node-1",)
    assert record.retries == {"node_lost": 1}


def test_node_loss_ignored_when_rescheduling_is_off() -> None:
    limits = Limits(reschedule_on_node_loss=False)
    seen = Observed(pods=(pod(ready=False),), last_heartbeat=NOW)
    action = decide(
        job(phase=Phase.RUNNING, attempts=(attempt(),)), seen, now=NOW, rng=random.Random(0), limits=limits
    )
    assert action.record is None


def test_silent_worker_is_lost() -> None:
    action = run(
        job(phase=Phase.RUNNING, attempts=(attempt(started=NOW - dt.timedelta(seconds=60)),)),
        pod(),
        heartbeat=NOW - dt.timedelta(seconds=30),
    )
    assert action.record is not None and action.record.current is not None
    assert action.record.current.reason == Reason.HEARTBEAT_LOST


def test_deadline_kills_the_attempt_as_timeout() -> None:
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(),), timeout_s=2), pod())
    assert action.record is not None and action.record.current is not None
    assert action.record.current.reason == Reason.TIMEOUT and action.delete == ("job-j1-1",)


def test_pod_that_vanished_is_deleted_disruption() -> None:
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(),)))
    assert action.record is not None and action.record.current is not None
    assert action.record.current.reason == Reason.DELETED and action.record.phase == Phase.QUEUED


def test_stale_attempt_is_fenced_its_pod_deleted_and_its_success_ignored() -> None:
    record = job(phase=Phase.RUNNING, attempts=(attempt(1, state=State.FAILED), attempt(2, node="node-2")))
    action = run(record, pod(1, phase=Pod.SUCCEEDED, exit_code=0), pod(2, node="node-2"), result_exists=True)
    assert action.delete == ("job-j1-1",)
    assert action.record is None
    assert [e.type for e in action.events] == [contract.EventType.STALE]


def test_second_copy_of_current_attempt_on_another_node_is_stale() -> None:
    record = job(phase=Phase.RUNNING, attempts=(attempt(1, node="node-2"),))
    action = run(record, pod(1, node="node-1"), pod(1, node="node-2"))
    assert action.delete == ("job-j1-1",) and action.events[0].type == contract.EventType.STALE


def test_cancel_kills_the_running_attempt() -> None:
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(),), cancel_requested=True), pod())
    assert action.record is not None and action.record.phase == Phase.CANCELLED
    assert action.delete == ("job-j1-1",) and action.dead_letter is None


def test_cancel_of_queued_job() -> None:
    action = run(job(cancel_requested=True))
    assert action.record is not None and action.record.phase == Phase.CANCELLED and action.create is None


def test_finished_job_cleans_up_leftover_pods() -> None:
    record = job(phase=Phase.SUCCEEDED, attempts=(attempt(state=State.SUCCEEDED),), result_attempt=1)
    action = run(record, pod(phase=Pod.SUCCEEDED, exit_code=0))
    assert action.delete == ("job-j1-1",) and action.record is None


def test_silent_worker_gets_a_startup_grace_before_its_first_heartbeat() -> None:
    slow_start = job(phase=Phase.RUNNING, attempts=(attempt(started=NOW - dt.timedelta(seconds=30)),))
    assert run(slow_start, pod(), heartbeat=None).summary == "watching"
    too_slow = job(phase=Phase.RUNNING, attempts=(attempt(started=NOW - dt.timedelta(seconds=90)),))
    lost = run(too_slow, pod(), heartbeat=None)
    assert lost.record is not None and lost.record.current is not None
    assert lost.record.current.reason == Reason.HEARTBEAT_LOST


def test_heartbeat_loss_does_not_blacklist_the_node() -> None:
    action = run(
        job(phase=Phase.RUNNING, attempts=(attempt(started=NOW - dt.timedelta(seconds=60)),)),
        pod(),
        heartbeat=NOW - dt.timedelta(seconds=30),
    )
    assert action.record is not None and action.record.avoid_nodes == ()


def test_anti_affinity_is_relaxed_when_every_ready_node_lost_the_job_once() -> None:
    record = job(avoid_nodes=("node-1", "node-2"))
    assert run(record, ready_nodes=frozenset({"node-1", "node-2", "node-3"})).create.avoid_nodes == (  # type: ignore[union-attr]
        "node-1",
        "node-2",
    )
    assert run(record, ready_nodes=frozenset({"node-1", "node-2"})).create.avoid_nodes == ()  # type: ignore[union-attr]


def test_a_stored_result_is_success_even_when_the_node_could_not_report_the_exit() -> None:
    """Kubelet dead, pod alive: the pod finished and stored its result, but nobody posts Succeeded."""
    running = job(phase=Phase.RUNNING, attempts=(attempt(),))
    action = run(running, pod(ready=False), result_exists=True)
    assert action.record is not None and action.record.phase == Phase.SUCCEEDED
    assert action.delete == ("job-j1-1",)
    failed = run(running, pod(phase=Pod.FAILED, exit_code=1, reason="Error"), result_exists=True)
    assert failed.record is not None and failed.record.phase == Phase.QUEUED


def test_node_loss_message_comes_from_the_verdict() -> None:
    action = run(
        job(phase=Phase.RUNNING, attempts=(attempt(),)),
        pod(ready=False),
        node_lost_why="node node-1: Lease not renewed for 41s",
    )
    assert action.record is not None and action.record.attempts[0].message == (
        "node node-1: Lease not renewed for 41s"
    )


def test_failed_attempt_keeps_its_last_output_lines() -> None:
    failing = dataclasses.replace(
        pod(phase=Pod.FAILED, exit_code=3, reason="Error"), message="line-1\nline-2"
    )
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(),)), failing)
    assert action.record is not None and action.record.attempts[0].log_tail == "line-1\nline-2"


def test_pending_pod_says_why_it_waits_and_forgets_it_once_running() -> None:
    why = "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."
    pending = dataclasses.replace(pod(phase=Pod.PENDING), message=why)
    action = run(job(phase=Phase.RUNNING, attempts=(attempt(state=State.PENDING),)), pending)
    assert action.record is not None and action.record.current is not None
    assert action.record.current.waiting_reason == why
    assert run(action.record, pending).record is None  # no rewrite while nothing changes
    started = run(action.record, pod())
    assert started.record is not None and started.record.current is not None
    assert started.record.current.waiting_reason == "" and started.record.current.state == State.RUNNING


def test_a_restarted_dispatcher_counts_silence_from_when_it_began_listening() -> None:
    long_running = job(phase=Phase.RUNNING, attempts=(attempt(started=NOW - dt.timedelta(seconds=300)),))
    # Listening for 3 s, nothing heard yet: not lost (it may beat any moment).
    fresh = run(long_running, pod(), heartbeat=None, listening_since=NOW - dt.timedelta(seconds=3))
    assert fresh.record is None
    # Listening for 11 s and it ran long past its startup allowance: it would have beaten.
    silent = run(long_running, pod(), heartbeat=None, listening_since=NOW - dt.timedelta(seconds=11))
    assert silent.record is not None and silent.record.attempts[0].reason == Reason.HEARTBEAT_LOST
    # A young attempt still gets its startup allowance.
    young = job(phase=Phase.RUNNING, attempts=(attempt(started=NOW - dt.timedelta(seconds=20)),))
    assert run(young, pod(), heartbeat=None, listening_since=NOW - dt.timedelta(seconds=11)).record is None


def test_an_attempt_starts_when_its_pod_runs_not_when_it_is_scheduled() -> None:
    creating = job(phase=Phase.RUNNING, attempts=(attempt(state=State.CREATING, started=None),))
    pending = run(creating, pod(phase=Pod.PENDING))
    assert pending.record is not None and pending.record.current is not None
    assert pending.record.current.state == State.PENDING and pending.record.current.started_at is None
    running = run(pending.record, pod())
    assert running.record is not None and running.record.current is not None
    assert running.record.current.started_at is not None


def test_a_stale_pod_waiting_for_its_kubelet_does_not_hold_up_the_current_attempt() -> None:
    record = job(
        phase=Phase.RUNNING,
        attempts=(attempt(1, state=State.FAILED), attempt(2, state=State.PENDING, node="node-2")),
    )
    old = dataclasses.replace(pod(1, phase=Pod.FAILED, reason="Deleted"), terminating=True)
    current = pod(2, node="node-2")
    action = run(record, old, current)
    assert action.delete == () and action.record is not None
    assert action.record.current is not None and action.record.current.state == State.RUNNING
    # On a node judged lost nothing would finish the deletion: it is deleted again, silently.
    lost = dataclasses.replace(old, node_ready=False)
    again = run(record, lost, current)
    assert again.delete == ("job-j1-1",) and again.events == ()


def test_a_job_no_node_can_fit_stays_queued_and_says_why() -> None:
    never = Placement(Fit.NEVER, "unschedulable: needs 200 CPU; largest Ready node offers 4")
    action = run(job(), placement=never)
    assert action.create is None and action.record is not None
    assert action.record.phase == Phase.QUEUED and action.record.attempts == ()
    assert action.record.waiting_reason == never.reason and action.record.waiting_since == NOW
    assert action.requeue_after is None  # no timer: capacity changes wake it
    assert [e.type for e in action.events] == [contract.EventType.WAITING]
    again = run(action.record, placement=never)
    assert again.record is None and again.events == ()


def test_pending_timeout_sends_a_waiting_job_to_the_dead_letter_queue() -> None:
    never = Placement(Fit.NEVER, "unschedulable: needs 200 CPU; largest Ready node offers 4")
    waiting = job(waiting_reason=never.reason, waiting_since=NOW - dt.timedelta(seconds=30))
    waiting = waiting.model_copy(update={"spec": waiting.spec.model_copy(update={"pending_timeout_s": 60})})
    still = run(waiting, placement=never)
    assert still.record is None and still.requeue_after == 30
    late = waiting.model_copy(update={"waiting_since": NOW - dt.timedelta(seconds=61)})
    dead = run(late, placement=never)
    assert dead.record is not None and dead.record.phase == Phase.DEAD
    assert dead.record.reason == Reason.UNSCHEDULABLE and dead.dead_letter is not None
    assert "needs 200 CPU" in dead.dead_letter.message


def test_an_attempt_the_backend_could_not_place_goes_back_to_the_queue() -> None:
    creating = job(phase=Phase.RUNNING, attempts=(attempt(state=State.CREATING, node=None, started=None),))
    why = "node node-1 refused job-j1-1: out of memory"
    refused = CreateOutcome(CreateFailure.UNSCHEDULABLE, attempt=1, message=why)
    action = run(creating, create_outcome=refused)
    assert action.record is not None and action.record.phase == Phase.QUEUED
    assert action.record.attempts == () and "refused" in action.record.waiting_reason
    assert action.create is None


def test_a_pod_whose_node_never_answered_fails_its_attempt_as_node_lost() -> None:
    creating = job(phase=Phase.RUNNING, attempts=(attempt(state=State.CREATING, node=None, started=None),))
    refused = CreateOutcome(CreateFailure.UNCERTAIN, attempt=1, message="no answer", node="node-2")
    action = run(creating, create_outcome=refused)
    assert action.record is not None and action.record.phase == Phase.QUEUED
    ended = action.record.attempts[-1]
    assert ended.state == State.FAILED and ended.reason == Reason.NODE_LOST and ended.node == "node-2"
    assert action.record.avoid_nodes == ("node-2",) and action.delete == ("job-j1-1",)
    assert [e.type for e in action.events] == [
        contract.EventType.ATTEMPT_FAILED,
        contract.EventType.RETRY_SCHEDULED,
    ]


def test_a_pod_the_backend_rejected_fails_its_attempt_as_a_dispatch_error() -> None:
    creating = job(phase=Phase.RUNNING, attempts=(attempt(state=State.CREATING, node=None, started=None),))
    refused = CreateOutcome(CreateFailure.REJECTED, attempt=1, message="invalid pod spec")
    action = run(creating, create_outcome=refused)
    assert action.record is not None and action.record.phase == Phase.QUEUED
    ended = action.record.attempts[-1]
    assert ended.reason == Reason.DISPATCH_ERROR and ended.message == "invalid pod spec"
    assert action.delete == () and action.record.app_failures == 1


def test_a_create_outcome_of_another_attempt_is_ignored() -> None:
    creating = job(phase=Phase.RUNNING, attempts=(attempt(state=State.CREATING, node=None, started=None),))
    refused = CreateOutcome(CreateFailure.REJECTED, attempt=2, message="invalid pod spec")
    action = run(creating, create_outcome=refused)
    assert action.summary == "create_pod" and action.create is not None


def test_creating_an_attempt_clears_the_waiting_reason() -> None:
    waiting = job(waiting_reason="waiting for capacity", waiting_since=NOW)
    action = run(waiting, placement=Placement(Fit.NOW))
    assert action.record is not None and action.record.phase == Phase.RUNNING
    assert action.record.waiting_reason == "" and action.record.waiting_since is None


def test_only_what_needs_a_clock_gets_a_timer_while_running() -> None:
    """A task attempt's heartbeats need checking; a command job's pod and node changes arrive as
    backend events, so it gets no timer unless its timeout_s needs one."""
    task = job(phase=Phase.RUNNING, attempts=(attempt(),))
    assert run(task, pod()).requeue_after == LIMITS.heartbeat_timeout_s / 2
    command = job(phase=Phase.RUNNING, attempts=(attempt(),), task=None)
    assert run(command, pod()).summary == "watching" and run(command, pod()).requeue_after is None
    timed = job(phase=Phase.RUNNING, attempts=(attempt(),), task=None, timeout_s=65)
    assert run(timed, pod()).requeue_after == 60  # started 5 s ago
