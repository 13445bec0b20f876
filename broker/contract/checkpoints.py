"""Checkpoints: a long task's state saved as it goes, so a replacement attempt resumes from it.

Two pieces, both in JetStream (docs/design/checkpoints.md says why they are fenced this way):

* the state itself, an object in ``jobq_artifacts`` under ``checkpoint_object_key(job, attempt,
  seq)``, stamped with its writer like any artifact and never replaced (``seq`` counts the
  attempt's own checkpoints: 1, 2, ...);
* the job's **pointer**, ``CheckpointPointer`` in KV ``jobq_checkpoints`` under the job's id: the
  newest checkpoint and the attempt that **owns** the pointer. Every change is a compare-and-set.
  An attempt takes ownership when it restores (or writes its first checkpoint); from then on a
  lower-numbered attempt that is still running can change nothing: it learns it was superseded.

The dispatcher reads the pointer when an attempt ends and keeps a summary on the attempt
(``AttemptCheckpoints``) together with the work a disrupted attempt threw away (``work_lost_s``).
"""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from broker.contract.base import Model
from broker.contract.jobs import MAX_CHECKPOINT_STEP, AttemptCheckpoints, Writer

BUCKET_CHECKPOINTS = "jobq_checkpoints"
"""Key ``<job_id>``: the job's ``CheckpointPointer``; only that job's pods may write it."""
CHECKPOINT_SEGMENT = ".checkpoint"
"""The path segment under an attempt's artifacts that holds its checkpoints; a task's own artifact
names may not use it."""
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024
"""The largest state ``ctx.checkpoint`` accepts."""


def checkpoint_object_key(job_id: str, attempt: int, seq: int) -> str:
    """The object in ``jobq_artifacts`` holding checkpoint ``seq`` (1, 2, ...) of an attempt."""
    return f"{job_id}/{attempt}/{CHECKPOINT_SEGMENT}/{seq}"


def checkpoint_pointer_key(job_id: str) -> str:
    """Key in BUCKET_CHECKPOINTS of a job's pointer."""
    return job_id


class CheckpointPointer(Model):
    """The newest checkpoint of a job and the attempt that owns it (KV ``jobq_checkpoints``)."""

    job_id: str
    owner: int = Field(ge=1, description="The attempt that may change this pointer (the fencing token)")
    seq: int = Field(default=0, ge=0, le=MAX_CHECKPOINT_STEP,
                     description="Checkpoints the owner has written; its next object is seq + 1")
    step: int | None = Field(default=None, ge=0, le=MAX_CHECKPOINT_STEP,
                             description="The task's step of the newest checkpoint; "
                             "None: there is none yet")
    object: str = Field(default="", description="Its object in jobq_artifacts (checkpoint_object_key)")
    digest: str = Field(default="", description="sha256:<hex> of the state (contract.artifact_digest)")
    size: int = Field(default=0, ge=0)
    writer: Writer | None = Field(default=None, description="The pod that wrote the object")
    made_by: int | None = Field(default=None, ge=1, description="The attempt whose work the state is")
    at: dt.datetime | None = Field(default=None, description="When the newest checkpoint was written")
    resumed_step: int | None = Field(default=None, ge=0, le=MAX_CHECKPOINT_STEP,
                                     description="The step the owner resumed from "
                                     "(None: it started from scratch)")
    resumed_from: int | None = Field(default=None, ge=1, description="The attempt whose state the owner "
                                     "resumed from")
    resumed_at: dt.datetime | None = Field(default=None, description="When the owner took the pointer "
                                           "(restored, or wrote its first checkpoint)")


def attempt_checkpoints(pointer: CheckpointPointer | None, attempt: int) -> AttemptCheckpoints | None:
    """The summary of ``attempt`` from the job's pointer; None unless the attempt owns it."""
    if pointer is None or pointer.owner != attempt:
        return None
    written = pointer.seq
    return AttemptCheckpoints(
        written=written,
        step=pointer.step if written else None,
        at=pointer.at if written else None,
        resumed_step=pointer.resumed_step,
        resumed_from_attempt=pointer.resumed_from,
    )
