"""The jobq wire contract: every subject, header, bucket and message schema.

This is the one module that the submitter, the workers and the broker share. Anything that
crosses a process boundary is defined here and nowhere else; non-Python publishers get the same
definitions as JSON Schema from ``jobq schema``.

Subjects (``<x>`` is a placeholder)::

    jobq.submit.<queue>                 job submissions (stream JOBQ_SUBMIT, work queue,
                                        de-duplicated by the Nats-Msg-Id header)
    jobq.events.<job_id>                every job transition (stream JOBQ_EVENTS)
    jobq.dead.<reason>                  dead-letter records (stream JOBQ_DEAD)
    jobq.attempt.<job_id>.<n>.hb        worker heartbeats and progress (core NATS)
    jobq.node.<node>.status             node agent heartbeat with its pods (core NATS)
    jobq.node.<node>.pods.create        request/reply: run a pod on that node
    jobq.node.<node>.pods.delete        request/reply: kill and forget a pod
    jobq.node.<node>.pods.log           request/reply: bytes of a pod's log (NodeLogRequest)
    jobq.logs                           request/reply: a job attempt's output (LogRequest)

Buckets: ``jobq_jobs`` (job records, CAS-updated), ``jobq_results`` (one entry per attempt,
key ``<job_id>.<n>``), ``jobq_idempotency`` (idempotency key digest -> job id), ``jobq_leader``
(dispatcher leader lease, TTL) and the object store
``jobq_artifacts`` (trained models and other task outputs).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CONTRACT_VERSION = 1

# --- streams, subjects, buckets -------------------------------------------------------------

STREAM_SUBMIT = "JOBQ_SUBMIT"
STREAM_EVENTS = "JOBQ_EVENTS"
STREAM_DEAD = "JOBQ_DEAD"
CONSUMER_DISPATCHER = "dispatcher"
BUCKET_JOBS = "jobq_jobs"
BUCKET_RESULTS = "jobq_results"
BUCKET_LEADER = "jobq_leader"
BUCKET_IDEMPOTENCY = "jobq_idempotency"
OBJECT_STORE_ARTIFACTS = "jobq_artifacts"

SUBMIT_WILDCARD = "jobq.submit.>"
EVENTS_WILDCARD = "jobq.events.>"
DEAD_WILDCARD = "jobq.dead.>"
HEARTBEAT_WILDCARD = "jobq.attempt.*.*.hb"
NODE_STATUS_WILDCARD = "jobq.node.*.status"
LOGS_SUBJECT = "jobq.logs"
"""Request/reply (LogRequest -> LogChunk), served by every dispatcher replica."""

HEADER_MSG_ID = "Nats-Msg-Id"
"""JetStream de-duplication header; set it to the job's idempotency key (or its id)."""
HEADER_CONTRACT = "Jobq-Contract"
"""Optional: the contract version the publisher was written against."""

MAX_SUBMISSION_BYTES = 256 * 1024
"""Largest accepted submission payload; bigger inputs belong in the object store."""
DUPLICATE_WINDOW_S = 15 * 60
"""How long JetStream remembers a Nats-Msg-Id; the dispatcher's own check has no limit."""


EXIT_TASK_FAILED = 1
"""Worker runner exit codes, the interface between a pod and the dispatcher: the task raised."""
EXIT_BAD_ARGS = 2
"""The task's arguments or environment are invalid: never worth a retry."""
EXIT_TASK_NOT_FOUND = 3
"""The task is no built-in and cannot be imported: never worth a retry."""
EXIT_NATS_UNREACHABLE = 4
"""The worker could not reach NATS: an infrastructure disruption, not the task's fault."""


POD_NATS_CREDS_PATH = "/etc/jobq/nats/nats.creds"
"""Where a task pod finds the ``creds`` key of the operator's JOBQ_POD_NATS_SECRET (Kubernetes).
The volume is optional, so the file is missing when the Secret has no such key: the runner then
ignores JOBQ_NATS_CREDS at this path and uses the Secret's user/password or token instead."""


def nats_auth_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """nats.connect() credentials from JOBQ_NATS_CREDS, JOBQ_NATS_USER/PASSWORD or JOBQ_NATS_TOKEN."""
    options: dict[str, Any] = {}
    if environ.get("JOBQ_NATS_CREDS"):
        options["user_credentials"] = environ["JOBQ_NATS_CREDS"]
    if environ.get("JOBQ_NATS_USER"):
        options["user"] = environ["JOBQ_NATS_USER"]
        options["password"] = environ.get("JOBQ_NATS_PASSWORD", "")
    if environ.get("JOBQ_NATS_TOKEN"):
        options["token"] = environ["JOBQ_NATS_TOKEN"]
    return options


def idempotency_digest(key: str) -> str:
    """KV-safe key for an idempotency key of any characters."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def submit_subject(queue: str) -> str:
    return f"jobq.submit.{queue}"


def event_subject(job_id: str) -> str:
    return f"jobq.events.{job_id}"


def dead_subject(reason: str) -> str:
    return f"jobq.dead.{reason}"


def heartbeat_subject(job_id: str, attempt: int) -> str:
    return f"jobq.attempt.{job_id}.{attempt}.hb"


def node_status_subject(node: str) -> str:
    return f"jobq.node.{node}.status"


def node_create_subject(node: str) -> str:
    return f"jobq.node.{node}.pods.create"


def node_delete_subject(node: str) -> str:
    return f"jobq.node.{node}.pods.delete"


def node_log_subject(node: str) -> str:
    return f"jobq.node.{node}.pods.log"


def result_key(job_id: str, attempt: int) -> str:
    return f"{job_id}.{attempt}"


def pod_name(job_id: str, attempt: int) -> str:
    """Pods are named deterministically so that creating one twice is harmless."""
    return f"job-{job_id}-{attempt}"


# --- enums ----------------------------------------------------------------------------------


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
    CANCELLED = "cancelled"
    INVALID = "invalid"
    """The submission could not be parsed or validated (dead letters only)."""
    UNSCHEDULABLE = "unschedulable"
    """The job waited longer than its pending_timeout_s for a node that could run it."""

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


# --- resources ------------------------------------------------------------------------------

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_memory(quantity: str) -> int:
    """Bytes in a Kubernetes-style memory quantity such as ``512Mi`` or ``4Gi``."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"memory {quantity!r} is not a quantity like 512Mi or 4Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Model):
    cpu: float = Field(default=0.5, gt=0, le=256, description="CPU cores requested")
    memory: str = Field(default="512Mi", description="Memory requested, e.g. 512Mi or 4Gi")
    gpu: int = Field(default=0, ge=0, le=16, description="GPUs requested")

    @field_validator("memory")
    @classmethod
    def _memory_is_quantity(cls, value: str) -> str:
        parse_memory(value)
        return value

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)


PROFILES: dict[str, Resources] = {
    "small": Resources(cpu=0.5, memory="512Mi"),
    "medium": Resources(cpu=1, memory="2Gi"),
    "large": Resources(cpu=4, memory="16Gi"),
    "gpu": Resources(cpu=4, memory="16Gi", gpu=1),
}
"""Named resource profiles: ``small`` fits scikit-learn work, ``large``/``gpu`` deep learning."""


# --- job spec (what publishers send) --------------------------------------------------------

JOB_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"
QUEUE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
TASK_PATTERN = r"^([A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)(:[A-Za-z_]\w*)?$"

BUILTIN_TASKS: dict[str, str] = {
    "sklearn.train": "train a classifier on a bundled data set and store the model",
    "sklearn.evaluate": "cross-validate a classifier on a bundled data set",
    "sklearn.sweep": "grid-search hyper-parameters of a classifier",
    "sklearn.predict": "batch-predict with a model stored by an earlier sklearn.train job",
    "demo.sleep": "sleep for args.seconds (tests and chaos experiments)",
    "demo.flaky": "fail until attempt args.succeed_on, then succeed (tests)",
    "demo.exit": "exit with args.code (tests)",
    "demo.hog": "allocate args.mb megabytes (tests the memory limit)",
}
"""Task names the workers implement; ``package.module:function`` names any importable task."""


class RetryPolicy(_Model):
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="Attempts allowed to fail with application errors"
    )
    backoff_base_s: float = Field(default=1.0, ge=0, le=3600, description="First retry delay, s")
    backoff_cap_s: float = Field(default=60.0, ge=0, le=86400, description="Largest retry delay, s")
    non_retryable_exit_codes: tuple[int, ...] = Field(
        default=(), description="Exit codes that end the job at once (dead)"
    )
    max_disruptions: int = Field(
        default=10, ge=0, le=1000, description="Node losses/evictions tolerated (separate budget)"
    )


class JobSpec(_Model):
    """A job as published to ``jobq.submit.<queue>``."""

    id: str = Field(pattern=JOB_ID_PATTERN, description="Lower-case DNS label, at most 40 chars")
    idempotency_key: str | None = Field(
        default=None, max_length=256, description="Submissions sharing a key run once"
    )
    queue: str = Field(default="default", pattern=QUEUE_PATTERN)
    task: str | None = Field(
        default=None, pattern=TASK_PATTERN, description="Built-in task name or 'module:function'"
    )
    image: str | None = Field(default=None, description="Container image (Kubernetes backend)")
    command: tuple[str, ...] | None = Field(default=None, description="Command instead of a task")
    args: dict[str, Any] = Field(default_factory=dict, description="Task arguments (JSON)")
    profile: str | None = Field(default=None, description=f"One of {sorted(PROFILES)}")
    resources: Resources | None = None
    retry: RetryPolicy | None = Field(default=None, description="Defaults to the queue's policy")
    pending_timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="Give up (dead letter, reason unschedulable) after waiting this long for a node; "
        "default: the queue's (JOBQ_QUEUE_PENDING_TIMEOUTS), else wait forever",
    )
    timeout_s: float | None = Field(
        default=None, gt=0, le=7 * 86400, description="Deadline for each attempt, s"
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first")
    labels: dict[str, str] = Field(default_factory=dict)
    contract: int = Field(default=CONTRACT_VERSION, description="Contract version")

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if (self.task is None) == (self.command is None):
            raise ValueError("give exactly one of 'task' or 'command'")
        if self.command is not None and not self.command:
            raise ValueError("'command' must not be empty")
        if self.task is not None and ":" not in self.task and self.task not in BUILTIN_TASKS:
            raise ValueError(
                f"unknown task {self.task!r}; built-in tasks are "
                f"{', '.join(sorted(BUILTIN_TASKS))}, or name 'module:function'"
            )
        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose from {sorted(PROFILES)}")
        if self.profile is not None and self.resources is not None:
            raise ValueError("give 'profile' or 'resources', not both")
        return self

    @property
    def requests(self) -> Resources:
        if self.resources is not None:
            return self.resources
        return PROFILES[self.profile or "small"]

    @property
    def dedupe_key(self) -> str:
        return self.idempotency_key or self.id


# --- job record (the dispatcher's durable state, bucket jobq_jobs) --------------------------


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Attempt(_Model):
    number: int
    pod: str
    state: AttemptState = AttemptState.CREATING
    node: str | None = None
    reason: FailureReason | None = None
    exit_code: int | None = None
    message: str = ""
    log_tail: str = ""
    """The last lines the attempt printed, captured before its pod was deleted (failed attempts:
    the container's termination message, which the kubelet fills from the log on error)."""
    waiting_reason: str = ""
    """Why the attempt's pod is not running yet, e.g. the scheduler's FailedScheduling message."""
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class JobRecord(_Model):
    spec: JobSpec
    phase: JobPhase = JobPhase.QUEUED
    attempts: tuple[Attempt, ...] = ()
    app_failures: int = 0
    disruptions: int = 0
    avoid_nodes: tuple[str, ...] = ()
    not_before: dt.datetime | None = None
    result_attempt: int | None = None
    cancel_requested: bool = False
    waiting_reason: str = ""
    """Why the queued job does not run yet (no node fits it, none has room now); empty otherwise."""
    waiting_since: dt.datetime | None = None
    """When it began to wait for a node in this queued stretch (pending_timeout_s counts from here)."""
    reason: FailureReason | None = None
    message: str = ""
    retries: dict[str, int] = Field(default_factory=dict)
    submitted_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None = None

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def cancelling(self, *, now: dt.datetime) -> JobRecord:
        """This job with a cancellation requested; the dispatcher carries it out."""
        return self.model_copy(update={"cancel_requested": True, "updated_at": now})

    def redriven(self, *, now: dt.datetime) -> JobRecord:
        """This dead job queued again with fresh retry budgets; its attempt history is kept."""
        return self.model_copy(
            update={
                "phase": JobPhase.QUEUED,
                "app_failures": 0,
                "disruptions": 0,
                "avoid_nodes": (),
                "reason": None,
                "message": "re-driven from the dead-letter queue",
                "finished_at": None,
                "not_before": None,
                "waiting_reason": "",
                "waiting_since": None,
                "updated_at": now,
            }
        )


# --- messages ---------------------------------------------------------------------------------


class JobEvent(_Model):
    job_id: str
    type: EventType
    phase: JobPhase | None = None
    attempt: int | None = None
    node: str | None = None
    reason: FailureReason | None = None
    message: str = ""
    at: dt.datetime = Field(default_factory=utcnow)


class TaskResult(_Model):
    """Written by the worker to ``jobq_results`` under ``<job_id>.<attempt>``."""

    job_id: str
    attempt: int
    node: str | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    started_at: dt.datetime
    finished_at: dt.datetime


class AttemptHeartbeat(_Model):
    job_id: str
    attempt: int
    node: str | None = None
    progress: float | None = Field(default=None, ge=0, le=1)
    message: str = ""
    at: dt.datetime = Field(default_factory=utcnow)


class PodSpec(_Model):
    """What the dispatcher asks a cluster backend to run."""

    name: str
    job_id: str
    attempt: int
    queue: str
    command: tuple[str, ...]
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    resources: Resources = Resources()
    avoid_nodes: tuple[str, ...] = ()
    node: str | None = Field(default=None, description="Set by the placement step")


class PodStatus(_Model):
    """A pod as a node reports it."""

    name: str
    job_id: str
    attempt: int
    phase: PodPhase
    node: str
    exit_code: int | None = None
    reason: str = ""
    """Kubernetes-style: OOMKilled, Error, Completed, Killed."""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    pid: int | None = None
    resources: Resources = Resources()
    log_tail: str = ""
    """Last lines of the pod's log once it failed (bounded by LOG_TAIL_BYTES / LOG_TAIL_LINES)."""


class NodeStatus(_Model):
    """The node agent's heartbeat on ``jobq.node.<node>.status``."""

    name: str
    boot_id: str
    capacity: Resources
    pods: tuple[PodStatus, ...] = ()
    interval_s: float = 1.0
    pid: int | None = None
    at: dt.datetime = Field(default_factory=utcnow)


LOG_TAIL_BYTES = 2048
LOG_TAIL_LINES = 80
"""A failed attempt keeps at most this much of its output in its record (Kubernetes'
FallbackToLogsOnError uses the same bounds for a container's termination message)."""


def tail_of(data: bytes) -> str:
    """The last LOG_TAIL_LINES lines / LOG_TAIL_BYTES bytes of ``data``, decoded leniently."""
    lines = data[-LOG_TAIL_BYTES:].decode(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


class LogRequest(_Model):
    """Request on ``LOGS_SUBJECT``: the output of one attempt of a job, from a byte offset."""

    job_id: str
    attempt: int | None = Field(default=None, ge=1, description="Default: the current attempt")
    offset: int = Field(default=0, ge=0, description="Byte offset to read from")
    limit: int = Field(default=64 * 1024, ge=1, le=1024 * 1024, description="Bytes to return at most")


class LogChunk(_Model):
    """Reply on ``LOGS_SUBJECT``. ``data`` is the bytes from ``offset`` decoded leniently;
    ``next_offset`` counts bytes. ``finished``: the attempt is over and no more output will come.
    ``error`` is set (and ``data`` empty) when the log cannot be read; ``tail`` then carries the
    lines the record kept."""

    job_id: str
    attempt: int | None = None
    pod: str | None = None
    node: str | None = None
    offset: int = 0
    data: str = ""
    next_offset: int = 0
    finished: bool = False
    error: str = ""
    tail: str = ""


class NodeReply(_Model):
    ok: bool
    error: str = ""


class NodeLogRequest(_Model):
    """Request on ``jobq.node.<node>.pods.log``: bytes of one pod's log file from ``offset``."""

    pod: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=253)
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=64 * 1024, ge=1, le=512 * 1024)


class NodeLogReply(_Model):
    """The node's answer: ``ok`` False (with ``error``) when it has no log for that pod. The log
    stays readable after the pod is deleted, for as long as the node keeps its work directory.
    ``data`` is URL-safe base64 in JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    ok: bool
    error: str = ""
    data: bytes = b""
    next_offset: int = 0
    running: bool = False
    """The pod is still running on this node: more output may come."""


class DeadLetter(_Model):
    """Published to ``jobq.dead.<reason>``: enough to see what went wrong and to re-drive it."""

    job_id: str | None
    reason: FailureReason
    message: str
    subject: str | None = None
    payload: str | None = Field(default=None, description="The original message, if any")
    headers: dict[str, str] = Field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    at: dt.datetime = Field(default_factory=utcnow)


class SubmissionError(ValueError):
    """A submission that can never be processed; ``reason`` says why in one line."""


def parse_submission(data: bytes) -> JobSpec:
    """Parse and validate a submission payload, raising SubmissionError with a clear message."""
    if len(data) > MAX_SUBMISSION_BYTES:
        raise SubmissionError(f"payload is {len(data)} bytes; the limit is {MAX_SUBMISSION_BYTES}")
    try:
        return JobSpec.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
        )
        raise SubmissionError(problems) from exc


def json_schema(kind: Literal["job", "event", "result", "dead-letter"] = "job") -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {
        "job": JobSpec,
        "event": JobEvent,
        "result": TaskResult,
        "dead-letter": DeadLetter,
    }
    schema = models[kind].model_json_schema()
    schema["$id"] = f"https://jobq.dev/schema/v{CONTRACT_VERSION}/{kind}.json"
    return schema
