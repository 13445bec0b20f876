"""A job as published (JobSpec), as the dispatcher keeps it (JobRecord), its attempts and the
writer stamp of its outputs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, model_validator

from broker.contract.base import Model
from broker.contract.limits import MAX_RECORD_BYTES
from broker.contract.names import ARTIFACT_WRITER_HEADER, CONTRACT_VERSION
from broker.contract.resources import PROFILES, Resources
from broker.contract.states import AttemptState, FailureReason, JobPhase
from broker.contract.tasks import BUILTIN_TASKS

JOB_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"
QUEUE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
MAX_RETENTION_S = 366 * 86400
"""The longest retention a job may ask for (``JobSpec.retention_s``): a year and a day."""
TASK_PATTERN = r"^([A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)(:[A-Za-z_]\w*)?$"


class RetryPolicy(Model):
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


class JobSpec(Model):
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
    retention_s: float | None = Field(
        default=None,
        ge=1,
        le=MAX_RETENTION_S,
        description="Keep the finished job (record, results, artifacts) this long after it ended, "
        "then delete it; default: the queue's (JOBQ_QUEUE_RETENTION), else JOBQ_RETENTION_S (7 days)",
    )
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
    def profile_name(self) -> str:
        """The profile the job runs with unless it gives ``resources``: its own, else its built-in
        task's (``BUILTIN_TASKS[task].profile``: ``medium`` for ``tf.train``), else ``small``."""
        if self.profile is not None:
            return self.profile
        builtin = BUILTIN_TASKS.get(self.task) if self.task is not None else None
        return builtin.profile if builtin is not None else "small"

    @property
    def requests(self) -> Resources:
        if self.resources is not None:
            return self.resources
        return PROFILES[self.profile_name]

    @property
    def dedupe_key(self) -> str:
        return self.idempotency_key or self.id


# --- job record (the dispatcher's durable state, bucket jobq_jobs) --------------------------

class Writer(Model):
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


MAX_CHECKPOINT_STEP = 2**53 - 1
"""The largest step a checkpoint may name (every JSON reader, JavaScript's included, holds it exactly)."""


class AttemptCheckpoints(Model):
    """What one attempt did with checkpoints, kept on its record by the dispatcher when it ends."""

    written: int = Field(default=0, ge=0, le=MAX_CHECKPOINT_STEP,
                         description="Checkpoints this attempt wrote")
    step: int | None = Field(default=None, ge=0, le=MAX_CHECKPOINT_STEP,
                             description="The step of its newest checkpoint")
    at: dt.datetime | None = Field(default=None, description="When that checkpoint was written")
    resumed_step: int | None = Field(default=None, ge=0, le=MAX_CHECKPOINT_STEP,
                                     description="The step it resumed from, if it restored one")
    resumed_from_attempt: int | None = Field(default=None, description="Whose checkpoint it resumed from")


class Attempt(Model):
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
    checkpoints: AttemptCheckpoints | None = None
    """What the attempt did with checkpoints (set when it ends, if it restored or wrote any)."""
    work_lost_s: float | None = None
    """Disrupted attempts: the seconds of work thrown away, from its newest checkpoint (or the
    start of its work) to its last sign of life (docs/design/checkpoints.md)."""


def accepted_attempt(record: JobRecord) -> Attempt | None:
    """The attempt whose result the dispatcher accepted (``result_attempt``), if any."""
    if record.result_attempt is None:
        return None
    return next((a for a in record.attempts if a.number == record.result_attempt), None)


class JobRecord(Model):
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
    expired_at: dt.datetime | None = None
    """When the leader began deleting this finished job because its retention ran out (its results
    and artifacts go next, then the record): every reader treats it as gone from then on
    (docs/design/retention.md)."""

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def expired(self) -> bool:
        """Its retention ran out and the leader is deleting it: readers treat it as gone."""
        return self.expired_at is not None

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

