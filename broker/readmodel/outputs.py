"""A job's outputs as every reader hands them out: its accepted result and that attempt's artifacts.

Only the record's ``result_attempt`` counts. Its result must carry the writer stamp of the
attempt's pod (``TaskResult.acceptance_problem``); an artifact is handed out only when its object
is stamped with the same writer and its bytes have the SHA-256 the result lists for its name
(``TaskResult.artifact_problem``). NATS cannot scope object names, so another attempt's pod could
overwrite an object under the accepted attempt's key: the digest check is what makes that
harmless. The SDK (``JobqClient.result_of``, ``artifact``, ``artifacts``) and the HTTP API
(``/api/jobs/{id}/artifacts``) both read through here.

Errors (all ``OutputError``)::

    OutputError
    ├── NotAccepted       the job has no accepted result (not succeeded, or not yet)
    ├── Expired           the job's retention ran out: its record and outputs are (being) deleted
    ├── OutputMissing     the accepted attempt stored no such artifact
    └── OutputRejected    what is stored is not what the accepted attempt wrote
"""

from __future__ import annotations

import base64
import binascii
import re

import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore
from pydantic import BaseModel, ConfigDict, Field

from broker import contract

_NAME = re.compile(contract.ARTIFACT_NAME_PATTERN)


class OutputError(Exception):
    """A job output that cannot be handed out; the message says why."""


class NotAccepted(OutputError):
    """The job has no accepted result: it has not succeeded (yet)."""

    def __init__(self, message: str, *, record: contract.JobRecord) -> None:
        super().__init__(message)
        self.record = record


class Expired(OutputError):
    """The job's retention ran out: the sweeper deletes its outputs, then its record."""


class OutputMissing(OutputError):
    """The accepted attempt stored no output of that name."""


class OutputRejected(OutputError):
    """The stored output is not the accepted attempt's (another writer, other bytes)."""


class ArtifactInfo(BaseModel):
    """One artifact of a job's accepted attempt, as its result lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    attempt: int = Field(description="The accepted attempt that saved it")
    sha256: str = Field(description="Hex SHA-256 of its bytes, as the attempt's result lists it")
    size: int | None = Field(description="Bytes stored (null: the object is missing)")
    problem: str = Field(default="", description="Why it would not be handed out ('' when it would)")


def valid_name(name: str) -> bool:
    """Whether ``name`` can name an artifact at all (``contract.ARTIFACT_NAME_PATTERN``)."""
    return (
        len(name) <= contract.MAX_ARTIFACT_NAME_CHARS
        and _NAME.match(name) is not None
        and ".." not in name.split("/")
    )


async def accepted_result(js: JetStreamContext, record: contract.JobRecord) -> contract.TaskResult:
    """The result of the record's accepted attempt, written by that attempt's pod. A command job
    stores none: its result is made from the attempt. NotAccepted, Expired or OutputRejected
    otherwise."""
    job_id = record.spec.id
    if record.expired:
        raise Expired(f"job {job_id} expired (its retention ran out)")
    attempt = contract.accepted_attempt(record)
    if record.phase != contract.JobPhase.SUCCEEDED or attempt is None:
        raise NotAccepted(
            f"job {job_id} has no accepted result (it is {record.phase}): only the "
            "outputs of a job's accepted attempt are handed out",
            record=record,
        )
    if record.spec.task is None:
        return contract.TaskResult(
            job_id=job_id,
            attempt=attempt.number,
            node=attempt.node,
            started_at=attempt.started_at or attempt.created_at,
            finished_at=attempt.finished_at or attempt.created_at,
        )
    key = contract.result_key(job_id, attempt.number)
    try:
        entry = await (await js.key_value(contract.BUCKET_RESULTS)).get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.BucketNotFoundError):
        if await _expired_since(js, job_id):  # ``record`` was read before the sweeper marked it
            raise Expired(f"job {job_id} expired (its retention ran out)") from None
        raise OutputRejected(f"job {job_id} succeeded but its accepted result {key} is missing") from None
    result = contract.TaskResult.model_validate_json(entry.value or b"{}")
    problem = result.acceptance_problem(attempt)
    if problem:
        raise OutputRejected(
            f"the stored result {key} of job {job_id} is not its accepted attempt's: {problem}"
        )
    return result


async def _expired_since(js: JetStreamContext, job_id: str) -> bool:
    """Whether the job's record is now gone or marked expired (retention deletes outputs first)."""
    try:
        entry = await (await js.key_value(contract.BUCKET_JOBS)).get(job_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.BucketNotFoundError):
        return True
    return contract.JobRecord.model_validate_json(entry.value or b"{}").expired


def _writer(record: contract.JobRecord, result: contract.TaskResult) -> contract.Writer | None:
    attempt = contract.accepted_attempt(record)
    return (attempt.writer if attempt is not None else None) or result.writer


def _stamp_problem(
    stamped: contract.Writer | None,
    writer: contract.Writer | None,
    *,
    key: str,
    record: contract.JobRecord,
    attempt: int,
) -> str:
    if writer is not None and stamped == writer:
        return ""
    by = stamped.model_dump() if stamped is not None else "no stamped writer"
    return (
        f"artifact {key} was written by {by}, not by the pod of job {record.spec.id}'s accepted "
        f"attempt {attempt}"
    )


async def artifacts(js: JetStreamContext, record: contract.JobRecord) -> list[ArtifactInfo]:
    """The artifacts the accepted attempt's result lists, by name, each checked against its stored
    object's metadata (writer stamp, size, the digest the object store keeps): ``problem`` says
    when one would not be handed out. NotAccepted or OutputRejected as ``accepted_result``."""
    result = await accepted_result(js, record)
    writer = _writer(record, result)
    try:
        store: ObjectStore | None = await js.object_store(contract.OBJECT_STORE_ARTIFACTS)
    except nats.js.errors.NotFoundError:
        store = None
    found: list[ArtifactInfo] = []
    for name, digest in sorted(result.artifacts.items()):
        sha256 = digest.removeprefix("sha256:")
        key = contract.artifact_key(record.spec.id, result.attempt, name)
        info = await _object_info(store, key)
        size, problem = None, f"no object {key} in {contract.OBJECT_STORE_ARTIFACTS}"
        if info is not None:
            stamped = contract.Writer.from_object_headers(info.headers)
            size = info.size
            problem = _stamp_problem(stamped, writer, key=key, record=record, attempt=result.attempt)
            if not problem and _hex_digest(info.digest) != sha256:
                problem = f"its bytes are not those attempt {result.attempt} saved as {name!r} ({digest})"
        found.append(
            ArtifactInfo(name=name, attempt=result.attempt, sha256=sha256, size=size, problem=problem)
        )
    return found


async def _object_info(store: ObjectStore | None, key: str) -> api.ObjectInfo | None:
    """The object's metadata; None when there is no such object (or bucket), or it was deleted."""
    if store is None:
        return None
    try:
        return await store.get_info(key)
    except nats.js.errors.NotFoundError:
        return None


async def artifact(js: JetStreamContext, record: contract.JobRecord, name: str) -> bytes:
    """The bytes of artifact ``name`` of the record's accepted attempt, checked against its
    writer and its result's digest. NotAccepted, OutputMissing or OutputRejected otherwise."""
    result = await accepted_result(js, record)
    key = contract.artifact_key(record.spec.id, result.attempt, name)
    missing = OutputMissing(
        f"job {record.spec.id}'s accepted attempt {result.attempt} stored no artifact {name!r} ({key})"
    )
    if not valid_name(name):
        raise missing
    try:
        got = await (await js.object_store(contract.OBJECT_STORE_ARTIFACTS)).get(key)
    except nats.js.errors.NotFoundError:  # the bucket, the object, or a deleted object
        raise missing from None
    except nats.js.errors.DigestMismatchError:
        raise OutputRejected(f"artifact {key}: its bytes do not match the object's own digest") from None
    problem = _stamp_problem(
        contract.Writer.from_object_headers(got.info.headers),
        _writer(record, result),
        key=key,
        record=record,
        attempt=result.attempt,
    )
    data = bytes(got.data or b"")
    problem = problem or result.artifact_problem(name, data)
    if problem:
        raise OutputRejected(problem if problem.startswith("artifact ") else f"artifact {key}: {problem}")
    return data


def _hex_digest(object_digest: str | None) -> str:
    """The hex SHA-256 of an object-store digest (``SHA-256=<url-safe base64>``); "" if unreadable."""
    kind, _, encoded = (object_digest or "").partition("=")
    if kind.upper() != "SHA-256":
        return ""
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    except (binascii.Error, ValueError):
        return ""
