"""Planting what the checkpoint readers are judged on: a job's live pointer in KV jobq_checkpoints
(as its pod would write it) and an ended job's record whose attempts the dispatcher stamped with
their checkpoints and work lost. Written as the operator, straight into NATS."""

from __future__ import annotations

import datetime as dt
import json

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from broker import contract
from tests.integration.test_attempt_outputs import put_record

AT = dt.datetime(2026, 12, 2, 12, 0, 3, tzinfo=dt.UTC)
async def pointers(nc: NATS) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(contract.BUCKET_CHECKPOINTS)
    except nats.js.errors.BucketNotFoundError:  # the store makes it; a bare server has none yet
        return await js.create_key_value(bucket=contract.BUCKET_CHECKPOINTS, history=1)


def pointer(job_id: str, owner: int, **fields: object) -> contract.CheckpointPointer:
    """Attempt ``owner`` resumed from step 4 of attempt ``owner - 1`` and wrote 3 checkpoints, the
    newest at step 7."""
    return contract.CheckpointPointer.model_validate({
        "job_id": job_id, "owner": owner, "seq": 3, "step": 7, "made_by": owner, "at": AT,
        "object": contract.checkpoint_object_key(job_id, owner, 3), "digest": "sha256:" + "0" * 64,
        "resumed_step": 4, "resumed_from": owner - 1 if owner > 1 else None, "resumed_at": AT, **fields,
    })


async def plant_pointer(nc: NATS, job_id: str, value: contract.CheckpointPointer | bytes) -> None:
    raw = value if isinstance(value, bytes) else value.model_dump_json().encode()
    await (await pointers(nc)).put(contract.checkpoint_pointer_key(job_id), raw)


def hostile_pointers(job_id: str, owner: int) -> list[bytes]:
    """Values under the job's key that no reader may show as attempt ``owner``'s checkpoint: not a
    pointer at all, another attempt's or another job's, or numbers no JSON reader holds exactly."""
    own = pointer(job_id, owner).model_dump(mode="json")
    raw = [b"", b"\xff\xfe not json", b"[" * 4000, b"null", b'"a string"']
    changed: list[dict[str, object]] = [
        {"step": 1e999}, {"colour": "red"}, {"owner": 0}, {"seq": -1},  # not a pointer
        {"owner": owner - 1}, {"owner": owner + 1},  # a superseded attempt's; one the record does not have
        {"job_id": job_id + "-other"},  # another job's value under this key
        {"step": 10**400}, {"step": 2**53}, {"resumed_step": -(2**60)}, {"seq": 10**20},  # beyond 2**53 - 1
    ]
    return raw + [json.dumps({**own, **change}).encode() for change in changed]


def disrupted_job(job_id: str) -> contract.JobRecord:
    """A dead job of two attempts, each lost with its node: the first wrote checkpoints up to step
    4 and lost 2.14 s; the second resumed from it, wrote up to step 9 and lost 0.5 s."""
    State, Reason = contract.AttemptState, contract.FailureReason
    attempts = (
        contract.Attempt(
            number=1, pod=contract.pod_name(job_id, 1), state=State.FAILED, node="node-1",
            reason=Reason.NODE_LOST, created_at=AT, started_at=AT, finished_at=AT, work_lost_s=2.14,
            checkpoints=contract.AttemptCheckpoints(written=5, step=4, at=AT),
        ),
        contract.Attempt(
            number=2, pod=contract.pod_name(job_id, 2), state=State.FAILED, node="node-2",
            reason=Reason.NODE_LOST, created_at=AT, started_at=AT, finished_at=AT, work_lost_s=0.5,
            checkpoints=contract.AttemptCheckpoints(
                written=5, step=9, at=AT, resumed_step=4, resumed_from_attempt=1),
        ),
    )
    return contract.JobRecord(
        spec=contract.JobSpec(id=job_id, task="demo.sleep"), phase=contract.JobPhase.DEAD,
        attempts=attempts, disruptions=2, reason=Reason.NODE_LOST, message="planted",
        submitted_at=AT, updated_at=AT, finished_at=AT,
    )


def running_job(job_id: str, attempts: int = 2) -> contract.JobRecord:
    """A job whose attempt ``attempts`` runs; the ones before it were lost with their node."""
    State, Reason = contract.AttemptState, contract.FailureReason
    lost = tuple(
        contract.Attempt(number=n, pod=contract.pod_name(job_id, n), state=State.FAILED, node=f"node-{n}",
                         reason=Reason.NODE_LOST, created_at=AT, started_at=AT, finished_at=AT,
                         work_lost_s=1.0, checkpoints=contract.AttemptCheckpoints(written=1, step=4, at=AT))
        for n in range(1, attempts)
    )
    now = contract.Attempt(number=attempts, pod=contract.pod_name(job_id, attempts), state=State.RUNNING,
                           node=f"node-{attempts}", created_at=AT, started_at=AT)
    return contract.JobRecord(
        spec=contract.JobSpec(id=job_id, task="demo.sleep"), phase=contract.JobPhase.RUNNING,
        attempts=(*lost, now), disruptions=attempts - 1, submitted_at=AT, updated_at=AT,
    )


__all__ = ["AT", "disrupted_job", "hostile_pointers", "plant_pointer", "pointer", "put_record", "running_job"]
