"""The shapes of the API's JSON answers, as pydantic models.

The handlers build these, and ``openapi.py`` generates the document's schemas from them, so the
document cannot drift from what the API returns. Job records, attempts, events and log chunks are
the wire contract's own models; recovery and retry figures are the read model's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from broker import contract
from broker.readmodel import checkpoints, outputs, recovery, retries
from broker.readmodel.times import OptionalTime

Counts = dict[str, int]


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Response):
    error: str = Field(examples=["bad_request"])
    message: str
    param: str | None = None


class JobSummary(_Response):
    id: str
    queue: str
    task: str
    phase: contract.JobPhase
    attempts: int
    attempt_state: str | None
    node: str | None
    reason: str | None
    message: str
    retries: Counts
    priority: int
    cancel_requested: bool
    submitted_at: OptionalTime
    updated_at: OptionalTime
    finished_at: OptionalTime
    progress: contract.AttemptProgress | None = Field(
        default=None, description="What the current attempt last reported (lists: running jobs only)"
    )
    checkpoint: checkpoints.LiveCheckpoint | None = Field(
        default=None,
        description="The running attempt's newest checkpoint and what it resumed from, from the job's "
        "live pointer (None once the attempt ended: see its `checkpoints`)",
    )
    work_lost_s: float | None = Field(
        default=None, description="Seconds of work the job's disrupted attempts threw away, summed "
        "(each attempt's `work_lost_s`; None: none recorded)"
    )

    @classmethod
    def of(
        cls,
        record: contract.JobRecord,
        *,
        progress: contract.AttemptProgress | None = None,
        checkpoint: checkpoints.LiveCheckpoint | None = None,
    ) -> JobSummary:
        current = record.current
        return cls(
            id=record.spec.id,
            queue=record.spec.queue,
            task=record.spec.task or " ".join(record.spec.command or ()),
            phase=record.phase,
            attempts=len(record.attempts),
            attempt_state=current.state.value if current else None,
            node=current.node if current else None,
            reason=record.reason.value if record.reason else None,
            message=record.message,
            retries=dict(record.retries),
            priority=record.spec.priority,
            cancel_requested=record.cancel_requested,
            submitted_at=record.submitted_at,
            updated_at=record.updated_at,
            finished_at=record.finished_at,
            progress=progress,
            checkpoint=checkpoint,
            work_lost_s=checkpoints.work_lost(record),
        )


class JobPage(_Response):
    jobs: list[JobSummary]
    total: int
    limit: int
    offset: int | None
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class AttemptView(contract.Attempt):
    """An attempt with its run time (started -> finished) and start time (created -> started)."""

    run_seconds: float | None
    start_seconds: float | None

    @classmethod
    def of(cls, attempt: contract.Attempt) -> AttemptView:
        return cls(
            **dict(attempt),
            run_seconds=recovery.seconds(attempt.started_at, attempt.finished_at),
            start_seconds=recovery.seconds(attempt.created_at, attempt.started_at),
        )


class JobDetail(_Response):
    job: JobSummary
    record: contract.JobRecord
    attempts: list[AttemptView]
    events: list[contract.JobEvent]


class Artifacts(_Response):
    job_id: str
    attempt: int = Field(description="The accepted attempt, whose artifacts these are")
    artifacts: list[outputs.ArtifactInfo]


class JobAccepted(_Response):
    job: JobSummary


class Node(_Response):
    name: str
    ready: bool
    pods: int
    running_attempts: int
    capacity: contract.Resources
    allocated_cpu: float
    allocated_memory: int
    last_heartbeat: OptionalTime
    not_ready_since: OptionalTime
    not_ready_reason: str = Field(description="Why the backend says not ready")
    attempt_heartbeats: Literal["alive", "silent", "unknown"] = Field(
        description="What attempt heartbeats say (docs/design/node-loss.md)"
    )


class Nodes(_Response):
    nodes: list[Node]
    failures: list[recovery.FailureReport]


class Queue(_Response):
    queue: str
    pending: int
    queued: int
    depth: int = Field(description="pending submissions + queued records")
    running: int
    jobs: Counts
    retries: Counts
    limit: int | None


class Queues(_Response):
    queues: list[Queue]
    totals: Counts
    dead_letters: int
    retry_timeline: retries.RetryTimeline


class DeadLetterView(_Response):
    seq: int
    job_id: str | None
    reason: str
    message: str
    at: OptionalTime
    attempts: int
    subject: str | None
    job_phase: str | None
    retryable: bool
    stream_seq: int | None
    size: int | None
    sha256: str | None
    excerpt: str | None
    original: str | None


class DeadLetters(_Response):
    dead_letters: list[DeadLetterView]
    total: int
    limit: int
    offset: int


class Health(_Response):
    status: str
    leader: bool | None = None
    synced: bool | None = None
    nats_connected: bool | None = None
    jobs: int | None = None
    backend: str | None = None


MODELS: tuple[type[BaseModel], ...] = (
    Error, JobPage, JobDetail, JobAccepted, Artifacts, Nodes, Queues, DeadLetters, Health,
    contract.LogChunk,
)  # fmt: skip
"""Every model a response carries at its top level (the rest are reached from these)."""
