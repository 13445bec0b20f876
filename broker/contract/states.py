"""The phases, states, reasons and event types of jobs, attempts and pods."""

from __future__ import annotations

import enum


class JobPhase(enum.StrEnum):
    QUEUED = "queued"
    """Accepted, waiting for a node, a queue slot or the end of a retry backoff."""
    RUNNING = "running"
    """An attempt's pod exists (it may still be starting)."""
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    """Gave up: budgets exhausted or a non-retryable failure; a dead-letter record exists."""
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.DEAD, JobPhase.CANCELLED)


class AttemptState(enum.StrEnum):
    CREATING = "creating"
    """Recorded (fenced) before its pod is created."""
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (AttemptState.SUCCEEDED, AttemptState.FAILED)


class FailureReason(enum.StrEnum):
    APP_ERROR = "app_error"
    """The task exited non-zero."""
    NON_RETRYABLE = "non_retryable"
    """The exit code is listed in the job's retry policy as not worth retrying."""
    OOM = "oom"
    """Killed for using more memory than requested."""
    TIMEOUT = "timeout"
    """The job's deadline passed."""
    NODE_LOST = "node_lost"
    """The node stopped heartbeating; its pods are presumed dead."""
    HEARTBEAT_LOST = "heartbeat_lost"
    """The attempt's own heartbeats stopped while its node stayed healthy."""
    EVICTED = "evicted"
    DELETED = "deleted"
    """The pod disappeared or was deleted by someone else."""
    DISPATCH_ERROR = "dispatch_error"
    """The cluster backend refused or failed to create the pod."""
    START_ERROR = "start_error"
    """The pod's command could not be started (no such program, permission denied): the node
    reports the pod Failed with reason ``StartError`` and the OS error; never retried."""
    CANCELLED = "cancelled"
    INVALID = "invalid"
    """The submission could not be parsed or validated (dead letters only)."""
    UNDELIVERABLE = "undeliverable"
    """JetStream gave up on the submission after SUBMIT_MAX_DELIVER deliveries (dead letters only)."""
    UNSCHEDULABLE = "unschedulable"
    """The job waited longer than its pending_timeout_s for a node that could run it."""
    REFUSED = "refused"
    """The queue's operator policy (JOBQ_QUEUE_POLICY) does not allow the job's task, command or
    image: dead-lettered at intake, or before its next pod if the policy changed; never retried."""

    @property
    def is_disruption(self) -> bool:
        """Infrastructure disruptions do not consume the application retry budget."""
        return self in _DISRUPTIONS


_DISRUPTIONS = frozenset(
    {FailureReason.NODE_LOST, FailureReason.HEARTBEAT_LOST, FailureReason.EVICTED, FailureReason.DELETED}
)


class PodPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class EventType(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    ATTEMPT_CREATED = "attempt_created"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_FAILED = "attempt_failed"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"
    STALE = "stale"
    """Something from a superseded attempt (a result, an exit, a pod) was seen and ignored."""
    REQUEUED = "requeued"
    WAITING = "waiting"
    """The job stays queued: no node can run it now, or none ever could (the message says why)."""
