"""Shared by the checkpoint recovery tests on both backends: training jobs, and the verdict on a
node kill judged from what the pods wrote (the pointer versions a watcher saw, the kill time the
test took), next to what the dispatcher recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import pickle
import time
import uuid
from typing import Any

from broker import contract
from chaos import checkpoint_evidence as evidence
from submitter.client import JobqClient

SKLEARN_TASK = "sklearn.train_incremental"
TF_TASK = "tf.train"
MID_EPOCH = 0.6
"""The tests kill this far into the epoch after the checkpoint they waited for (a kill right after
a save would lose nothing and prove little)."""


def job_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def train_args(*, checkpoint: bool, epochs: int, epoch_seconds: float, seed: int = 7,
               dataset: str = "digits") -> dict[str, Any]:
    return {"dataset": dataset, "epochs": epochs, "epoch_seconds": epoch_seconds, "seed": seed,
            "checkpoint": checkpoint}


async def wait_checkpoints(client: JobqClient, job: str, *, at_least: int, attempt: int = 1,
                           timeout: float = 120) -> contract.CheckpointPointer:
    """The job's pointer once ``attempt`` has saved ``at_least`` checkpoints."""
    deadline = time.monotonic() + timeout
    while True:
        ptr = await evidence.pointer(client.js, job)
        if ptr is not None and ptr.owner == attempt and ptr.seq >= at_least:
            return ptr
        assert time.monotonic() < deadline, f"{job}: no {at_least} checkpoints within {timeout}s: {ptr}"
        await asyncio.sleep(0.1)


async def wait_attempts(client: JobqClient, job: str, *, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        record = await client.get(job)
        if record is not None and len(record.attempts) >= count:
            return
        assert time.monotonic() < deadline, f"{job}: no attempt {count} within {timeout}s"
        await asyncio.sleep(0.2)


@dataclasses.dataclass(frozen=True)
class Loss:
    """One node kill of one job: the work lost by the pods' evidence and by the dispatcher."""

    job_id: str
    saved_step: int | None
    """The step the killed attempt had saved (its last pointer version), None: none."""
    resumed_step: int | None
    """The step the replacement resumed from (its claim of the pointer), None: from scratch."""
    redone: int | None
    """Checkpoints the replacement wrote (its last pointer version): the epochs it really trained."""
    work_lost_s: float
    """The kill time minus the newest checkpoint's ``at`` (without one, minus the attempt's start)."""
    dispatcher_work_lost_s: float | None
    interval_s: float
    """The longest gap between the killed attempt's checkpoints, at least the epoch pacing."""
    detected_after_s: float | None
    """From the kill to the dispatcher ending the attempt."""

    def bound(self, detection_s: float) -> float:
        return self.interval_s + detection_s


def judge(record: contract.JobRecord, log: evidence.PointerLog, killed_at: dt.datetime) -> Loss:
    """The first attempt of ``record`` was killed at ``killed_at``; ``log`` watched its pointer."""
    lost, replacement = record.attempts[0], record.attempts[1]
    saved = log.last_of(lost.number)
    assert lost.started_at is not None
    lost_s, step = evidence.work_lost(killed_at, saved, lost.number, lost.started_at)
    claim = next(iter(log.of(replacement.number)), None)
    last = log.last_of(replacement.number)
    made = [p.at for p in log.of(lost.number) if p.seq and p.at is not None]
    paced = float(record.spec.args.get("epoch_seconds", 0.0))
    return Loss(
        job_id=record.spec.id,
        saved_step=step,
        resumed_step=claim.resumed_step if claim else None,
        redone=last.seq if last else None,
        work_lost_s=lost_s,
        dispatcher_work_lost_s=lost.work_lost_s,
        interval_s=max(evidence.interval_s(made) or 0.0, paced),
        detected_after_s=(lost.finished_at - killed_at).total_seconds() if lost.finished_at else None,
    )


async def model_digest(client: JobqClient, job: str) -> str:
    """sha256 of the coefficients of the model the job's accepted attempt stored (its pickled
    pipeline, read back through the SDK: the test's own digest, not the task's)."""
    import numpy as np

    pipeline = pickle.loads(await client.artifact(job, "model.pkl"))  # our own test's artifact
    model = pipeline.named_steps["model"]
    mlp = hasattr(model, "coefs_")
    arrays = [*model.coefs_, *model.intercepts_] if mlp else [model.coef_, model.intercept_]
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def report(backend: str, with_ckpt: Loss, without: Loss | None, *, detection_s: float) -> str:
    line = (f"{backend}: work lost with checkpoints {with_ckpt.work_lost_s:.2f}s "
            f"(dispatcher {with_ckpt.dispatcher_work_lost_s}s, saved step {with_ckpt.saved_step}, resumed "
            f"{with_ckpt.resumed_step}, interval {with_ckpt.interval_s:.2f}s, bound "
            f"{with_ckpt.bound(detection_s):.2f}s, detected after {with_ckpt.detected_after_s}s)")
    if without is not None:
        line += (f"; without {without.work_lost_s:.2f}s (dispatcher {without.dispatcher_work_lost_s}s, "
                 f"detected after {without.detected_after_s}s)")
    print(line)
    return line
