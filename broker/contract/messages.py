"""Messages about jobs: transition events, attempt results and heartbeats, log reads."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from pydantic import Field

from broker.contract.base import Model, utcnow
from broker.contract.jobs import JOB_ID_PATTERN, Attempt, JobRecord, Writer
from broker.contract.names import MAX_PROGRESS_MESSAGE_CHARS
from broker.contract.states import EventType, FailureReason, JobPhase


class JobEvent(Model):
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


def artifact_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class TaskResult(Model):
    """Written once by the worker to ``jobq_results`` under ``<job_id>.<attempt>`` (KV create, never
    overwritten), stamped with its writer. The dispatcher accepts it only from the attempt's pod."""

    job_id: str
    attempt: int
    node: str | None = None
    writer: Writer | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    started_at: dt.datetime
    finished_at: dt.datetime
    artifacts: dict[str, str] = Field(default_factory=dict)
    """The artifacts this attempt saved: name -> ``artifact_digest`` of its bytes. Readers hand
    out an artifact only when its bytes match: NATS permissions can scope a pod's result key but
    not object names, so this is what makes another pod's overwrite of an artifact harmless."""

    def artifact_problem(self, name: str, data: bytes) -> str:
        """Why ``data`` is not the artifact ``name`` this attempt saved ("" when it is)."""
        digest = self.artifacts.get(name)
        if digest is None:
            return f"the result of attempt {self.attempt} lists no artifact {name!r}"
        if artifact_digest(data) != digest:
            return f"its bytes are not those attempt {self.attempt} saved as {name!r} ({digest})"
        return ""

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


class AttemptHeartbeat(Model):
    job_id: str
    attempt: int
    node: str | None = None
    progress: float | None = Field(default=None, ge=0, le=1)
    message: str = ""
    at: dt.datetime = Field(default_factory=utcnow)


class AttemptProgress(Model):
    """The latest progress of one attempt, in KV ``jobq_progress`` under ``progress_key(job_id,
    attempt)``: written by the attempt's pod when the task reports a change (at most every few
    seconds, and once more at the end). Readers show only the job's current attempt's."""

    job_id: str
    attempt: int = Field(ge=1)
    fraction: float = Field(ge=0, le=1, description="Done, from 0 to 1")
    message: str = Field(default="", max_length=MAX_PROGRESS_MESSAGE_CHARS)
    at: dt.datetime = Field(default_factory=utcnow, description="When the task reported it")


class LogRequest(Model):
    """Request on ``LOGS_SUBJECT``: the output of one attempt of a job, from a byte offset."""

    job_id: str
    attempt: int | None = Field(default=None, ge=1, description="Default: the current attempt")
    offset: int = Field(default=0, ge=0, description="Byte offset to read from")
    limit: int = Field(default=64 * 1024, ge=1, le=1024 * 1024, description="Bytes to return at most")


class LogChunk(Model):
    """Reply on ``LOGS_SUBJECT``. ``data`` is the bytes from ``offset`` decoded leniently;
    ``next_offset`` counts bytes. ``finished``: the attempt is over and no more output will come.
    ``error`` is set (and ``data`` empty) when the log cannot be read; ``tail`` then carries the
    lines the record kept. ``not_found``: the dispatcher has no record of the job (yet: a job
    published a moment ago is recorded when the dispatcher takes it in)."""

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
    not_found: bool = False



class JobRequest(Model):
    """Request on ``job_request_subject(op)`` (``cancel``, ``retry``): what a submitter asks the
    dispatchers to do to one job; only a dispatcher writes job records."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)


class JobRequestReply(Model):
    """Reply to a JobRequest: the job's record after the change (or as it was, when there was
    nothing to do), or ``error`` (``not_found`` when there is no such job)."""

    record: JobRecord | None = None
    error: str = ""
    not_found: bool = False
