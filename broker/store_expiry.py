"""The store's side of retention (docs/design/retention.md): deleting one finished job's record,
results and artifacts, and keeping idempotency keys for a window.

Every delete here leaves nothing behind that grows with the number of jobs ever expired: results
and artifacts are purged from their streams by subject (no marker at all), and the record's
purge marker carries a per-message TTL (``MARKER_TTL_S``), so the bucket's subjects, which
``jobq list`` reads, are those of kept jobs only. Each delete is idempotent: a pass that crashed
half-way is simply done again.
"""

from __future__ import annotations

import base64
import functools
import json

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from broker import contract, natsutil
from broker.store import Conflict, Store, allow_stream_option

log = structlog.get_logger("jobq.store")

MARKER_TTL_S = 86400
"""How long the purge marker of an expired record stays in ``jobq_jobs``: every live watcher
(standby dispatchers, ``JobqClient.wait``) sees the deletion long before it goes."""
_WRONG_LAST_SEQUENCE = 10071
_ARTIFACTS_STREAM = f"OBJ_{contract.OBJECT_STORE_ARTIFACTS}"


async def purge_record(st: Store, job_id: str, *, revision: int, marker_ttl: bool) -> None:
    """Remove the record of ``job_id`` if it is still at ``revision`` (else raise Conflict). The
    KV watchers see a PURGE; the marker expires after MARKER_TTL_S where the stream allows it."""
    headers = {
        "KV-Operation": "PURGE",
        api.Header.ROLLUP: "sub",
        api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision),
    }
    if marker_ttl:
        headers[api.Header.MSG_TTL] = str(MARKER_TTL_S)
    subject = f"$KV.{contract.BUCKET_JOBS}.{job_id}"
    try:
        await natsutil.retry(lambda: st.js.publish(subject, b"", headers=headers))
    except nats.js.errors.APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            raise Conflict(job_id) from exc
        raise


async def purge_results(st: Store, job_id: str) -> None:
    """Remove every attempt's result and stored progress of ``job_id`` (keys ``<job>.<attempt>``
    in ``jobq_results`` and ``jobq_progress``), leaving no marker."""
    for bucket in (contract.BUCKET_RESULTS, contract.BUCKET_PROGRESS):
        try:
            await natsutil.retry(functools.partial(
                st.js.purge_stream, f"KV_{bucket}", subject=f"$KV.{bucket}.{job_id}.*"))
        except nats.js.errors.NotFoundError:  # a bucket not made yet (a store older than it)
            continue


async def purge_artifact(st: Store, key: str) -> bool:
    """Remove artifact ``key`` (its chunks, then its metadata) from ``jobq_artifacts``, leaving no
    marker; False when there is none. Chunks first: a crash in between leaves metadata that the
    next pass finds and purges again."""
    meta = f"$O.{contract.OBJECT_STORE_ARTIFACTS}.M.{base64.urlsafe_b64encode(key.encode()).decode()}"
    try:
        got = await natsutil.retry(lambda: st.js.get_last_msg(_ARTIFACTS_STREAM, meta))
    except nats.js.errors.NotFoundError:
        return False
    nuid = json.loads(got.data or b"{}").get("nuid")
    if nuid:
        chunks = f"$O.{contract.OBJECT_STORE_ARTIFACTS}.C.{nuid}"
        await natsutil.retry(lambda: st.js.purge_stream(_ARTIFACTS_STREAM, subject=chunks))
    await natsutil.retry(lambda: st.js.purge_stream(_ARTIFACTS_STREAM, subject=meta))
    return True


async def keep_keys_for(js: JetStreamContext, window_s: float) -> None:
    """Idempotency keys expire ``window_s`` after they were claimed (the bucket's max_age); a
    bucket made before (or with another window) is updated."""
    name = f"KV_{contract.BUCKET_IDEMPOTENCY}"
    info = await js.stream_info(name)
    if info.config.max_age != window_s:
        info.config.max_age = window_s
        info.config.duplicate_window = min(info.config.duplicate_window or window_s, window_s)
        await js.update_stream(info.config)
        log.info("idempotency_window_set", stream=name, window_s=window_s)


async def allow_marker_ttl(nc: NATS) -> bool:
    """Let ``jobq_jobs`` take per-message TTLs (nats-server 2.11+) for its purge markers; False
    when the server cannot (markers then stay, one small message per expired job)."""
    return await allow_stream_option(nc, f"KV_{contract.BUCKET_JOBS}", "allow_msg_ttl")


async def claim_key_of_gone_job(st: Store, key: str, *, owner: str, job_id: str) -> str:
    """``key`` is bound to job ``owner``: rebind it to ``job_id`` when ``owner`` is gone (its record
    expired or is expiring), so a resubmission after the job was deleted runs again instead of
    being taken for a duplicate of nothing. Returns the job id the key binds now."""
    got = await st.get(owner)
    if got is not None and not got[0].expired:
        return owner
    digest = contract.idempotency_digest(key)
    try:
        entry = await st.idempotency.get(digest)
    except nats.js.errors.KeyNotFoundError:  # its window ended meanwhile: claim it afresh
        return await st.claim_idempotency_key(key, job_id=job_id)
    if (entry.value or b"").decode() != owner or entry.revision is None:
        return (entry.value or b"").decode() or owner
    try:
        await st.idempotency.update(digest, job_id.encode(), last=entry.revision)
    except nats.js.errors.KeyWrongLastSequenceError:  # someone else rebound it first
        return ((await st.idempotency.get(digest)).value or b"").decode() or owner
    log.info("idempotency_key_rebound", job_id=job_id, previous_job_id=owner)
    return job_id
