"""The jobq wire contract: every subject, header, bucket and message schema.

This is the one module that the submitter, the workers and the broker share. Anything that
crosses a process boundary is defined here and nowhere else; non-Python publishers get the same
definitions as JSON Schema from ``jobq schema``.

Subjects (``<x>`` is a placeholder)::

    jobq.submit.<queue>                 job submissions (stream JOBQ_SUBMIT, work queue,
                                        de-duplicated by the Nats-Msg-Id header); exactly one
                                        token after ``jobq.submit.``, matching QUEUE_PATTERN, and
                                        it is the job's queue (``submission_queue``)
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
(dispatcher leader lease, TTL) and the object stores
``jobq_artifacts`` (trained models and other task outputs) and ``jobq_dead`` (the whole original
of every dead letter, key ``dead_original_key(sha256)``).

Stream ``JOBQ_ADVISORIES`` keeps JetStream's MAX_DELIVERIES advisories of the dispatcher's
submission consumer, so a submission JetStream gave up on is dead-lettered even if no dispatcher
was listening at that moment.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

CONTRACT_VERSION = 1

# --- streams, subjects, buckets -------------------------------------------------------------

STREAM_SUBMIT = "JOBQ_SUBMIT"
STREAM_EVENTS = "JOBQ_EVENTS"
STREAM_DEAD = "JOBQ_DEAD"
STREAM_ADVISORIES = "JOBQ_ADVISORIES"
CONSUMER_DISPATCHER = "dispatcher"
BUCKET_JOBS = "jobq_jobs"
BUCKET_RESULTS = "jobq_results"
BUCKET_LEADER = "jobq_leader"
BUCKET_IDEMPOTENCY = "jobq_idempotency"
OBJECT_STORE_ARTIFACTS = "jobq_artifacts"
OBJECT_STORE_DEAD = "jobq_dead"
"""The whole original of each dead letter (the letter itself carries a bounded excerpt)."""

SUBMIT_PREFIX = "jobq.submit."
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
HEADER_EPOCH = "Jobq-Epoch"
"""The leader epoch (fencing token) of the dispatcher that sent a node agent's delete request."""

NATS_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``: one message, so one submission or one KV value (a job
record, a result) is at most this, headers included."""
MAX_SUBMISSION_BYTES = 960 * 1024
"""Largest accepted submission payload, both as published and as the dispatcher re-serialises it
(the spec of a job record). It leaves room under NATS_MAX_PAYLOAD for the record's attempts (see
MAX_RECORD_BYTES); bigger inputs belong in the object store."""
MAX_RECORD_BYTES = NATS_MAX_PAYLOAD - 4 * 1024
"""Largest job record (one value of ``jobq_jobs``), leaving room for the publish's headers. A
record that would grow past it drops the kept output of its older attempts (JobRecord.fitted)."""
DUPLICATE_WINDOW_S = 15 * 60
"""How long JetStream remembers a Nats-Msg-Id; the dispatcher's own check has no limit."""
SUBMIT_STREAM_MAX_MSG_BYTES = NATS_MAX_PAYLOAD
"""Largest message stream JOBQ_SUBMIT stores (JetStream refuses bigger ones at publish time);
bigger than MAX_SUBMISSION_BYTES so that an oversized submission still gets a dead letter."""

SUBMIT_MAX_DELIVER = 5
"""Deliveries of one submission before JetStream gives up on it (``max_deliver`` of the
dispatcher's consumer). Invalid submissions are dead-lettered on their first delivery; only
infrastructure errors (the store unavailable) lead to a redelivery, after
SUBMIT_REDELIVERY_DELAYS_S. A submission still not acked after this many deliveries is
dead-lettered with reason ``undeliverable`` from JetStream's MAX_DELIVERIES advisory."""
SUBMIT_REDELIVERY_DELAYS_S = (2.0, 4.0, 8.0, 16.0)
"""Pause before the 2nd, 3rd, ... delivery of a submission that hit an infrastructure error:
the store may be unavailable for about 30 s before a valid job is given up as undeliverable."""

DEAD_LETTER_MAX_BYTES = 512 * 1024
"""A dead letter's JSON is never bigger than this (NATS's default max_payload is 1 MiB), however
big or odd the original: see ``DeadLetter.encode``."""
DEAD_LETTER_INLINE_BYTES = 64 * 1024
"""An original up to this size that is valid UTF-8 is also carried whole, as ``payload``."""
DEAD_LETTER_EXCERPT_BYTES = 4 * 1024
"""A dead letter's ``excerpt``: this many leading bytes of the original, decoded leniently."""
DEAD_LETTER_MESSAGE_CHARS = 2000
"""A dead letter's ``message`` (and a SubmissionError's) is cut to this many characters."""


EXIT_TASK_FAILED = 1
"""Worker runner exit codes, the interface between a pod and the dispatcher: the task raised."""
EXIT_BAD_ARGS = 2
"""The task's arguments or environment are invalid: never worth a retry."""
EXIT_TASK_NOT_FOUND = 3
"""The task is no built-in and cannot be imported: never worth a retry."""
EXIT_NATS_UNREACHABLE = 4
"""The worker could not reach NATS: an infrastructure disruption, not the task's fault."""
EXIT_RESULT_EXISTS = 5
"""Another writer's result is already stored under this attempt's key: the worker never
overwrites it, and its own result is lost (retried like a task failure)."""

POD_REASON_START_ERROR = "StartError"
"""PodStatus.reason of a pod whose command could not be started (no such program, permission
denied), as Kubernetes reports it; jobq's node agent and simulated kubelet report it the same way:
phase Failed, exit code EXIT_START_ERROR, the OS error as the message (``log_tail``). The
dispatcher ends the attempt with FailureReason.START_ERROR: another node would fail the same way."""
EXIT_START_ERROR = 128
"""The exit code Kubernetes (containerd/runc) reports with StartError."""


# --- pod environment: what the dispatcher sets for a pod, what the worker runner reads ---------

ENV_JOB_ID = "JOBQ_JOB_ID"
"""The job's id."""
ENV_ATTEMPT = "JOBQ_ATTEMPT"
"""The attempt's number, >= 1."""
ENV_QUEUE = "JOBQ_QUEUE"
ENV_TASK = "JOBQ_TASK"
"""A key of BUILTIN_TASKS or 'package.module:function' (task jobs only)."""
ENV_ARGS = "JOBQ_ARGS"
"""The task's arguments as a JSON object, when they fit MAX_INLINE_ARGS_BYTES."""
ENV_ARGS_FROM = "JOBQ_ARGS_FROM"
"""Set (to ARGS_FROM_RECORD) instead of ENV_ARGS when the arguments are bigger: the runner reads
them from ``spec.args`` of the job's record in bucket ``jobq_jobs``."""
ARGS_FROM_RECORD = "record"
ENV_NATS_URL = "JOBQ_NATS_URL"
"""nats://host:port, or a comma-separated list."""
ENV_NODE = "JOBQ_NODE"
"""The node running the pod (set by the node agent or the kubelet)."""
ENV_POD = "JOBQ_POD"
"""The pod's name (set by the dispatcher): the writer identity stamped on results and artifacts."""
ENV_POD_UID = "JOBQ_POD_UID"
"""The pod's uid, unique per pod ever created (Kubernetes: ``metadata.uid`` via the downward API;
embedded: generated by the node agent). Part of the writer identity."""
MAX_INLINE_ARGS_BYTES = 16 * 1024
"""Largest JSON of a task's arguments given inline in ENV_ARGS. Linux limits one environment
string to 128 KiB (MAX_ARG_STRLEN) and all of them plus the command line to about a quarter of
the stack limit, and a Pod object's env is stored in etcd: bigger arguments travel in the job
record (ENV_ARGS_FROM)."""


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
    return f"{SUBMIT_PREFIX}{queue}"


def max_deliveries_subject(stream: str = STREAM_SUBMIT, consumer: str = CONSUMER_DISPATCHER) -> str:
    """JetStream's advisory for a message that reached its consumer's max_deliver; its JSON
    carries ``stream_seq`` and ``deliveries``."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


def dead_original_key(sha256: str) -> str:
    """Key in OBJECT_STORE_DEAD of a dead letter's whole original (content-addressed)."""
    return f"sha256-{sha256}"


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


def artifact_key(job_id: str, attempt: int, name: str) -> str:
    """Where attempt ``attempt`` of ``job_id`` keeps artifact ``name`` in OBJECT_STORE_ARTIFACTS.
    Artifacts are scoped to the attempt, so a superseded attempt that keeps running can never
    replace what the accepted attempt wrote; readers resolve a job's artifact through the record's
    ``result_attempt``."""
    return f"{job_id}/{attempt}/{name}"


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
    "demo.echo_size": "report the size and SHA-256 of args.data (tests big arguments)",
    "demo.witness": "sleep, save a random token as artifact witness.txt and return it, logging "
                    "start and end to the JSONL file args.ledger (the exactly-once checker's evidence)",
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


ARTIFACT_WRITER_HEADER = "Jobq-Writer"
"""Header of an artifact's object-store metadata: its Writer as JSON (the value is a one-element
list, as NATS object-store headers are in every client)."""


class Writer(_Model):
    """Who wrote a result or an artifact: the pod, and what tells two pods of one name apart."""

    pod: str
    pod_uid: str = ""
    node: str | None = None
    boot_id: str = ""
    """The node's /proc/sys/kernel/random/boot_id (a machine that rebooted is another writer)."""

    def object_headers(self) -> dict[str, list[str]]:
        """This writer as the headers of an object-store entry (ObjectMeta.headers)."""
        return {ARTIFACT_WRITER_HEADER: [self.model_dump_json()]}

    @classmethod
    def from_object_headers(cls, headers: Mapping[str, Any] | None) -> Writer | None:
        """The writer stamped in an object's headers; None when there is none or it is unreadable."""
        raw = (headers or {}).get(ARTIFACT_WRITER_HEADER)
        if isinstance(raw, list | tuple):
            raw = raw[0] if raw else None
        if not isinstance(raw, str):
            return None
        try:
            return cls.model_validate_json(raw)
        except ValidationError:
            return None


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
    writer: Writer | None = None
    """Who wrote the result the dispatcher accepted from this attempt (succeeded attempts only):
    readers hand out the result and artifacts of the accepted attempt only when they carry it."""


def accepted_attempt(record: JobRecord) -> Attempt | None:
    """The attempt whose result the dispatcher accepted (``result_attempt``), if any."""
    if record.result_attempt is None:
        return None
    return next((a for a in record.attempts if a.number == record.result_attempt), None)


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
    epoch: int = 0
    """Leader epoch of the dispatcher that last wrote the record (0: none yet). A dispatcher never
    writes a record whose epoch is higher than its own (docs/design/dispatcher.md, Leadership)."""

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def cancelling(self, *, now: dt.datetime) -> JobRecord:
        """This job with a cancellation requested; the dispatcher carries it out."""
        return self.model_copy(update={"cancel_requested": True, "updated_at": now})

    def fitted(self, max_bytes: int = MAX_RECORD_BYTES) -> JobRecord:
        """This record, or a copy small enough to be one KV value: the kept output (log tails)
        of its older attempts goes first, oldest first, then their messages and waiting reasons.
        The current attempt keeps everything. A record that cannot fit is returned as small as
        it gets (writing it then fails loudly)."""
        size = len(self.model_dump_json().encode())
        if size <= max_bytes:
            return self
        attempts = list(self.attempts)
        for fields in (("log_tail",), ("message", "waiting_reason")):
            for i in range(len(attempts) - 1):
                old = attempts[i]
                freed = sum(len(getattr(old, f).encode()) for f in fields)
                if not freed:
                    continue
                attempts[i] = old.model_copy(update=dict.fromkeys(fields, ""))
                size -= freed  # JSON escaping only makes the saving bigger
                if size <= max_bytes:
                    fitted = self.model_copy(update={"attempts": tuple(attempts)})
                    if len(fitted.model_dump_json().encode()) <= max_bytes:
                        return fitted
        return self.model_copy(update={"attempts": tuple(attempts)})

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
    epoch: int = 0
    """Leader epoch of the dispatcher that published it (0: not a leader's event)."""


class TaskResult(_Model):
    """Written once by the worker to ``jobq_results`` under ``<job_id>.<attempt>`` (KV create, never
    overwritten), stamped with its writer. The dispatcher accepts it only from the attempt's pod."""

    job_id: str
    attempt: int
    node: str | None = None
    writer: Writer | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    started_at: dt.datetime
    finished_at: dt.datetime

    def acceptance_problem(self, attempt: Attempt, *, pod_uid: str = "") -> str:
        """Why this result cannot count as ``attempt``'s ("" when it can): it must carry a writer
        stamp naming the attempt's own pod; when the pod's uid is known (``pod_uid``, or the
        writer the dispatcher recorded on the attempt) the stamp must carry it; and once the
        dispatcher recorded the accepted writer, the stamp must be exactly that one."""
        if self.attempt != attempt.number:
            return f"it is the result of attempt {self.attempt}, not of attempt {attempt.number}"
        if self.writer is None:
            return "it carries no writer stamp"
        if self.writer.pod != attempt.pod:
            return f"it was written by pod {self.writer.pod!r}, not by the attempt's pod {attempt.pod!r}"
        uid = pod_uid or (attempt.writer.pod_uid if attempt.writer is not None else "")
        if uid and self.writer.pod_uid != uid:
            return (f"it was written by pod {self.writer.pod} with uid {self.writer.pod_uid or '(none)'}, "
                    f"not by the attempt's pod (uid {uid})")
        if attempt.writer is not None and self.writer != attempt.writer:
            return f"its writer {self.writer.model_dump()} is not the accepted {attempt.writer.model_dump()}"
        return ""


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
    epoch: int = 0
    """Leader epoch of the dispatcher asking (Kubernetes: annotation ``jobq.io/epoch``); the
    embedded node agent refuses creates and deletes from an epoch older than one it has seen."""


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
    uid: str = ""
    """Unique per pod the node ever started (the pod's ENV_POD_UID): tells two pods of one name apart."""


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
    """Published to ``jobq.dead.<reason>``: enough to see what went wrong and to re-drive it.

    A letter about a message (an invalid or undeliverable submission, or the spec of a job that
    died) is built with ``of_original``: it carries the original's ``size``, ``sha256`` and an
    ``excerpt``, the whole original when it is small (``payload``), and names the key of the
    whole original in object store ``jobq_dead`` (``original``). ``encode`` keeps the letter under
    DEAD_LETTER_MAX_BYTES whatever the original was."""

    job_id: str | None
    reason: FailureReason
    message: str
    subject: str | None = None
    payload: str | None = Field(
        default=None,
        description=f"The original message, whole, when it is valid UTF-8 of at most "
        f"{DEAD_LETTER_INLINE_BYTES} bytes; otherwise read `original`",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    at: dt.datetime = Field(default_factory=utcnow)
    stream_seq: int | None = Field(
        default=None, description="The submission's sequence in stream JOBQ_SUBMIT, if it was one"
    )
    size: int | None = Field(default=None, description="Bytes in the original message")
    sha256: str | None = Field(default=None, description="SHA-256 of the original message, hex")
    excerpt: str | None = Field(
        default=None,
        description=f"The original's first {DEAD_LETTER_EXCERPT_BYTES} bytes, invalid UTF-8 replaced",
    )
    original: str | None = Field(
        default=None, description=f"Key of the whole original in object store {OBJECT_STORE_DEAD}"
    )
    _original_bytes: bytes | None = PrivateAttr(default=None)

    @classmethod
    def of_original(
        cls,
        data: bytes,
        *,
        job_id: str | None,
        reason: FailureReason,
        message: str,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
        stream_seq: int | None = None,
        attempts: tuple[Attempt, ...] = (),
        at: dt.datetime | None = None,
    ) -> DeadLetter:
        """The letter about ``data``, every field bounded; it keeps ``data`` in memory (never
        serialized) for the publisher to store under ``original``."""
        digest = hashlib.sha256(data).hexdigest()
        payload: str | None = None
        if len(data) <= DEAD_LETTER_INLINE_BYTES:
            try:
                payload = data.decode("utf-8")
            except UnicodeDecodeError:
                payload = None
        letter = cls(
            job_id=clip(job_id, 64) if job_id is not None else None,
            reason=reason,
            message=clip(message, DEAD_LETTER_MESSAGE_CHARS),
            subject=clip(subject, 256) if subject is not None else None,
            payload=payload,
            headers=_bounded_headers(headers or {}),
            attempts=attempts,
            at=at or utcnow(),
            stream_seq=stream_seq,
            size=len(data),
            sha256=digest,
            excerpt=data[:DEAD_LETTER_EXCERPT_BYTES].decode("utf-8", errors="replace"),
            original=dead_original_key(digest),
        )
        letter._original_bytes = data
        return letter

    @property
    def original_bytes(self) -> bytes | None:
        """The whole original, in the process that built the letter with ``of_original`` only."""
        return self._original_bytes

    def encode(self) -> bytes:
        """This letter's JSON, at most DEAD_LETTER_MAX_BYTES: if it would be bigger, the inline
        ``payload`` goes first (``original`` still names the whole of it), then all but the
        last few attempts and their log tails, then headers, and long texts are cut."""
        data = self.model_dump_json().encode()
        if len(data) <= DEAD_LETTER_MAX_BYTES:
            return data
        slim = self.model_copy(update={"payload": None})
        data = slim.model_dump_json().encode()
        if len(data) <= DEAD_LETTER_MAX_BYTES:
            return data
        recent = tuple(
            a.model_copy(update={"log_tail": "", "message": clip(a.message, 200), "waiting_reason": ""})
            for a in self.attempts[-5:]
        )
        slim = slim.model_copy(update={"attempts": recent})
        data = slim.model_dump_json().encode()
        if len(data) <= DEAD_LETTER_MAX_BYTES:
            return data
        # Every text is now at most a few thousand characters: a few tens of KiB as JSON.
        bare = slim.model_copy(
            update={
                "job_id": clip(self.job_id, 64) if self.job_id is not None else None,
                "message": clip(self.message, DEAD_LETTER_MESSAGE_CHARS),
                "subject": clip(self.subject, 256) if self.subject is not None else None,
                "headers": {},
                "attempts": (),
                "excerpt": clip(self.excerpt, 1024) if self.excerpt is not None else None,
                "sha256": clip(self.sha256, 64) if self.sha256 is not None else None,
                "original": clip(self.original, 128) if self.original is not None else None,
            }
        )
        return bare.model_dump_json().encode()


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis), always encodable UTF-8."""
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text.encode("utf-8", errors="replace").decode("utf-8")


_DEAD_LETTER_HEADERS = 32


def _bounded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """At most 32 headers, names cut to 128 and values to 1024 characters."""
    bounded: dict[str, str] = {}
    for name, value in list(headers.items())[:_DEAD_LETTER_HEADERS]:
        bounded[clip(str(name), 128)] = clip(str(value), 1024)
    return bounded


class SubmissionError(ValueError):
    """A submission that can never be processed; ``reason`` says why in one line."""


def submission_queue(subject: str) -> str:
    """The queue a submission subject names: ``jobq.submit.<queue>`` with exactly one token
    after the prefix, matching QUEUE_PATTERN. Raises SubmissionError for any other subject."""
    queue = subject[len(SUBMIT_PREFIX) :] if subject.startswith(SUBMIT_PREFIX) else ""
    if not subject.startswith(SUBMIT_PREFIX) or re.fullmatch(QUEUE_PATTERN, queue) is None:
        raise SubmissionError(
            f"subject {clip(subject, 256)!r} does not name a queue: submit to {SUBMIT_PREFIX}<queue>, "
            f"one token of lower-case letters, digits and '-' (at most 32)"
        )
    return queue


def parse_submission(data: bytes, *, subject: str | None = None) -> JobSpec:
    """Parse and validate a submission, raising SubmissionError with a clear message.

    This never raises anything else, whatever ``data`` holds. With ``subject`` (the subject the
    message was published on) the subject must name a queue (``submission_queue``); a spec
    without ``queue`` takes that queue, and one whose ``queue`` disagrees is invalid."""
    queue = submission_queue(subject) if subject is not None else None
    if len(data) > MAX_SUBMISSION_BYTES:
        raise SubmissionError(f"payload is {len(data)} bytes; the limit is {MAX_SUBMISSION_BYTES}")
    try:
        spec = JobSpec.model_validate_json(data)
    except ValidationError as exc:
        raise SubmissionError(_problems(exc)) from exc
    except Exception as exc:  # whatever else hostile bytes make the parser raise is a verdict too
        raise SubmissionError(clip(f"unreadable: {exc!r}", DEAD_LETTER_MESSAGE_CHARS)) from exc
    if queue is not None:
        if "queue" not in spec.model_fields_set:
            spec = spec.model_copy(update={"queue": queue})
        elif spec.queue != queue:
            raise SubmissionError(
                f"queue: {spec.queue!r} disagrees with the subject's queue {queue!r}; "
                f"publish to {submit_subject(spec.queue)} or leave 'queue' out"
            )
    try:
        again = JobSpec.model_validate_json(spec.model_dump_json())
    except Exception as exc:
        raise SubmissionError(clip(f"does not survive a JSON round trip: {exc!r}", 500)) from exc
    if again != spec:
        raise SubmissionError("not plain JSON: NaN and Infinity are no JSON numbers")
    if (canonical := len(spec.model_dump_json().encode())) > MAX_SUBMISSION_BYTES:  # e.g. 1e5 -> 100000.0
        raise SubmissionError(f"the job is {canonical} bytes as stored; the limit is {MAX_SUBMISSION_BYTES}")
    return spec


def _problems(exc: ValidationError, *, most: int = 10) -> str:
    """A ValidationError in one bounded line: the first ``most`` problems, each cut short."""
    errors = exc.errors(include_url=False, include_input=False)
    problems = [
        clip(f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}", 300)
        for err in errors[:most]
    ]
    if len(errors) > most:
        problems.append(f"and {len(errors) - most} more")
    return clip("; ".join(problems), DEAD_LETTER_MESSAGE_CHARS)


def guess_job_id(data: bytes) -> str | None:
    """The job id of an invalid submission, when it has a readable one (for the dead letter).
    Never raises: deep nesting, invalid UTF-8 or any size give None."""
    try:
        value = pydantic_core.from_json(data)
    except Exception:
        return None
    job_id = value.get("id") if isinstance(value, dict) else None
    return job_id if isinstance(job_id, str) and len(job_id) <= 64 else None


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
