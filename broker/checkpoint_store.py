"""The dispatcher's reads and deletes of checkpoints (docs/design/checkpoints-dispatcher.md): a job's pointer
in KV ``jobq_checkpoints`` and its state objects in ``jobq_artifacts``.

Pods write both and may delete neither; the leader reads a pointer when an attempt ends, deletes
the objects no pointer will reference again (``broker.dispatcher.checkpoint_gc`` says which) and,
when the job expires, the pointer and every object. Each delete leaves no marker and is idempotent.
"""

from __future__ import annotations

import functools

import nats.js.errors
import pydantic
import structlog

from broker import checkpoint_gc, contract, natsutil, store_expiry
from broker.store import Store

log = structlog.get_logger("jobq.store")

_STREAM = f"KV_{contract.BUCKET_CHECKPOINTS}"


async def read_pointer(st: Store, job_id: str) -> contract.CheckpointPointer | None:
    """The job's pointer; None when there is none, or when what is stored is not a pointer of
    this job (logged: a pod wrote garbage, and nothing is trusted from it)."""
    subject = f"$KV.{contract.BUCKET_CHECKPOINTS}.{contract.checkpoint_pointer_key(job_id)}"
    try:  # one request: the key's last message (a KeyValue handle would look the bucket up first)
        msg = await natsutil.retry(lambda: st.js.get_last_msg(_STREAM, subject))
    except nats.js.errors.NotFoundError:  # no pointer (or a store older than the bucket)
        return None
    if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
        return None
    try:
        pointer = contract.CheckpointPointer.model_validate_json(msg.data or b"")
    except pydantic.ValidationError as exc:
        log.warning("checkpoint_pointer_unreadable", job_id=job_id, errors=exc.error_count())
        return None
    if pointer.job_id != job_id:
        log.warning("checkpoint_pointer_unreadable", job_id=job_id, names_job=pointer.job_id)
        return None
    return pointer


async def delete_objects(st: Store, job_id: str, names: list[str]) -> int:
    """Delete those of checkpoint objects ``names`` of ``job_id`` that are garbage under the
    pointer read again just before (``checkpoint_gc.collectable``): none when there is no readable
    pointer. Returns how many existed and were deleted."""
    if not names:
        return 0
    current = await read_pointer(st, job_id)
    kept = [n for n in names if current is None or not checkpoint_gc.collectable(current, job_id, n)]
    if kept:
        log.info("checkpoint_delete_skipped", job_id=job_id, objects=kept,
                 owner=current.owner if current else None, reason="the pointer may reference them")
    deleted = 0
    for name in names:
        if name not in kept:
            deleted += await store_expiry.purge_artifact(st, name)
    if deleted:
        log.info("checkpoints_deleted", job_id=job_id, objects=deleted,
                 owner=current.owner if current else None)
    return deleted


async def purge_objects(st: Store, names: list[str]) -> int:
    """Delete checkpoint objects ``names`` whatever the pointer says (the job expires)."""
    return sum([await store_expiry.purge_artifact(st, name) for name in names])


async def purge_pointer(st: Store, job_id: str) -> None:
    """Remove the job's pointer, leaving no marker."""
    subject = f"$KV.{contract.BUCKET_CHECKPOINTS}.{contract.checkpoint_pointer_key(job_id)}"
    try:
        await natsutil.retry(functools.partial(st.js.purge_stream, _STREAM, subject=subject))
    except nats.js.errors.NotFoundError:  # a store older than the bucket
        return
