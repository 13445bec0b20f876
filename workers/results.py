"""The worker's thin JetStream layer: the attempt's result (KV) and artifacts (object store).

Outputs are scoped to the attempt and stamped with their writer (``contract.Writer``): the result
is created once under ``contract.result_key(job, attempt)`` and never overwritten, artifacts live
under ``contract.artifact_key(job, attempt, name)`` with the writer in their metadata. Another
job's artifacts are read from its accepted attempt only (``accepted_result``).

Buckets are created by the broker; when one is missing (a runner started on its own, in tests)
it is created here with the same essentials (results: history 1).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from pydantic import ValidationError

from broker import contract, natsutil
from workers import tasks

log = structlog.get_logger("workers.results")

_TRANSIENT = natsutil.TRANSIENT_OR_RECONNECTING
"""Errors worth retrying: a reconnect or a JetStream leader election in progress."""
_ARTIFACT_NAME = re.compile(contract.ARTIFACT_NAME_PATTERN)


class ResultNotWritten(RuntimeError):
    """JetStream did not accept the result before the deadline."""


class ResultExists(RuntimeError):
    """Another writer's result is stored under this attempt's key; it is never overwritten."""

    def __init__(self, key: str, existing: bytes) -> None:
        try:
            writer = contract.TaskResult.model_validate_json(existing).writer
            by = f"by {writer.model_dump()}" if writer is not None else "without a writer stamp"
        except ValidationError:
            by = "(unreadable)"
        super().__init__(f"another result is already stored under {key}, written {by}")
        self.key = key
        self.existing = existing


class ArtifactExists(RuntimeError):
    """Another writer's artifact is stored under this attempt's key; it is never overwritten."""


def jsonable(output: object) -> dict[str, Any]:
    """``output`` as strict JSON would carry it; TypeError/ValueError if it cannot be."""
    if not isinstance(output, dict):
        raise TypeError(f"a task must return a dict, not {type(output).__name__}")
    try:
        parsed: dict[str, Any] = json.loads(json.dumps(output, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the task's output is not JSON-serialisable: {exc}") from exc
    return parsed


async def write_result(js: JetStreamContext, result: contract.TaskResult, *,
                       deadline_s: float = 30.0) -> int:
    """Create ``result`` under ``result_key(job_id, attempt)``, once; return the KV revision.

    The key already holding exactly these bytes is success (our own write, retried after its
    reply was lost); any other value raises ResultExists and is left as it is."""
    key = contract.result_key(result.job_id, result.attempt)
    payload = result.model_dump_json().encode()

    async def create() -> int:
        kv = await _results_bucket(js)
        for _ in range(3):
            try:
                revision = await kv.create(key, payload)
                return revision or 0  # nats-py types the revision optional; a write always has one
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    entry = await kv.get(key)
                except nats.js.errors.KeyNotFoundError:
                    continue  # purged or deleted meanwhile: create again
                if entry.value == payload:
                    log.info("result_already_written", key=key, revision=entry.revision)
                    return entry.revision or 0
                raise ResultExists(key, entry.value or b"") from None
        raise ResultNotWritten(f"could not create result {key}: it kept appearing and vanishing")

    try:
        return await natsutil.retry(create, transient=_TRANSIENT, budget_s=deadline_s, what="result_create")
    except _TRANSIENT as exc:
        raise ResultNotWritten(f"could not write result {key}: {exc!r}") from exc


class ArtifactStore:
    """Whole-object reads and writes in ``contract.OBJECT_STORE_ARTIFACTS``, each object stamped
    with its writer (``contract.Writer`` in the object's headers)."""

    def __init__(self, js: JetStreamContext, *, deadline_s: float = 60.0) -> None:
        self._js = js
        self._deadline_s = deadline_s
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def put(self, key: str, data: bytes, *, writer: contract.Writer, create_only: bool = False) -> None:
        """Store ``data`` under ``key`` stamped with ``writer``. The same writer may replace its
        own object; one written by anyone else raises ArtifactExists and is kept. ``create_only``:
        never replace an object (a pod may not purge the old one's chunks); the same writer's
        object with these very bytes counts as written (our own put, retried after a lost reply)."""
        check_object_key(key)

        async def put() -> None:
            store = await self._open()
            try:
                info = await store.get_info(key)
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None:
                existing = contract.Writer.from_object_headers(info.headers)
                if existing != writer:
                    by = existing.model_dump() if existing is not None else "no stamped writer"
                    raise ArtifactExists(f"artifact {key} was already written by {by}; not replacing it")
                if create_only:
                    if info.digest == object_digest(data):
                        return
                    raise ArtifactExists(f"artifact {key} already holds other bytes; not replacing it")
            meta = api.ObjectMeta(name=key, description=f"written by pod {writer.pod}",
                                  headers=writer.object_headers())
            await store.put(key, data, meta=meta)

        await natsutil.retry(put, transient=_TRANSIENT, budget_s=self._deadline_s, what="artifact_put")

    async def get(self, key: str) -> tuple[bytes, contract.Writer | None]:
        """The object under ``key`` and its stamped writer; ArtifactNotFound if there is none."""
        check_object_key(key)

        async def get() -> tuple[bytes, contract.Writer | None]:
            store = await self._open()
            got = await store.get(key)
            return bytes(got.data or b""), contract.Writer.from_object_headers(got.info.headers)

        try:
            return await natsutil.retry(get, transient=_TRANSIENT, budget_s=self._deadline_s,
                                        what="artifact_get")
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError) as exc:
            raise tasks.ArtifactNotFound(
                f"no artifact {key!r} in {contract.OBJECT_STORE_ARTIFACTS}") from exc

    async def accepted(self, job_id: str) -> tuple[int, contract.TaskResult]:
        """``accepted_result`` of ``job_id``: whose artifacts of that job may be read, and which."""
        return await accepted_result(self._js, job_id)

    async def _open(self) -> ObjectStore:
        async with self._lock:
            if self._store is None:
                try:
                    self._store = await self._js.object_store(contract.OBJECT_STORE_ARTIFACTS)
                except nats.js.errors.BucketNotFoundError:
                    self._store = await self._js.create_object_store(contract.OBJECT_STORE_ARTIFACTS)
            return self._store


async def accepted_result(js: JetStreamContext, job_id: str) -> tuple[int, contract.TaskResult]:
    """The attempt of ``job_id`` whose result the dispatcher accepted, and that result (its
    writer checked against the attempt: ``TaskResult.acceptance_problem``). ArtifactNotFound, saying
    why, when the job has no record, no accepted result, or one that fails the check."""

    async def read() -> tuple[contract.JobRecord | None, contract.TaskResult | None, str]:
        try:
            entry = await (await js.key_value(contract.BUCKET_JOBS)).get(job_id)
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
            return None, None, ""
        record = contract.JobRecord.model_validate_json(entry.value or b"{}")
        if record.result_attempt is None:
            return record, None, ""
        key = contract.result_key(job_id, record.result_attempt)
        try:
            got = await (await _results_bucket(js)).get(key)
        except nats.js.errors.KeyNotFoundError:
            return record, None, key
        return record, contract.TaskResult.model_validate_json(got.value or b"{}"), key

    try:
        record, result, key = await natsutil.retry(read, transient=_TRANSIENT, budget_s=30.0,
                                                   what="accepted_read")
    except ValidationError as exc:
        raise tasks.ArtifactNotFound(f"job {job_id}: its record or result is unreadable: {exc}") from None
    if record is None:
        raise tasks.ArtifactNotFound(f"no job {job_id}: it has no record in {contract.BUCKET_JOBS}")
    attempt = contract.accepted_attempt(record)
    if attempt is None:
        raise tasks.ArtifactNotFound(
            f"job {job_id} has no accepted result (it is {record.phase}): only the artifacts of a "
            f"job's accepted attempt can be read")
    if result is None:
        raise tasks.ArtifactNotFound(f"job {job_id}: its accepted result {key} is missing")
    problem = result.acceptance_problem(attempt)
    if problem or result.writer is None:
        raise tasks.ArtifactNotFound(
            f"job {job_id}: the result of its accepted attempt {attempt.number} fails the writer "
            f"check: {problem}")
    return attempt.number, result


def check_object_key(key: str) -> None:
    """An object name in the artifact store: path segments of letters, digits, -_=. (no ``..``)."""
    if not _ARTIFACT_NAME.match(key) or ".." in key.split("/"):
        raise ValueError(f"artifact name {key!r} must be path segments of letters, digits, -_=.")


def check_artifact_name(name: str) -> None:
    """A task's own artifact name: ``check_object_key``, and no segment reserved for checkpoints."""
    check_object_key(name)
    if contract.CHECKPOINT_SEGMENT in name.split("/"):
        raise ValueError(f"artifact name {name!r} uses the segment {contract.CHECKPOINT_SEGMENT!r}, "
                         "reserved for the job's checkpoints (ctx.checkpoint)")


def object_digest(data: bytes) -> str:
    """The digest the object store keeps for ``data`` (``SHA-256=<url-safe base64>``)."""
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


async def _results_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(contract.BUCKET_RESULTS)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(bucket=contract.BUCKET_RESULTS, history=1)

