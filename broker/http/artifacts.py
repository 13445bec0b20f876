"""A job's artifacts over HTTP: the list, and one artifact's bytes.

Both read the job's accepted attempt only, through ``broker.readmodel.outputs`` (the same checks
as the SDK): a job without an accepted result, or a name its result does not list, is a 404 with
the reason; bytes that are not the accepted attempt's (another writer, other bytes) a 409.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web

from broker import contract
from broker.http import responses
from broker.http.keys import DISPATCHER
from broker.http.params import bad_param, error, job_id_of, query
from broker.readmodel import outputs

CHUNK_BYTES = 1024 * 1024
"""An artifact is sent in writes of this size (chunked over HTTP/1.1, with its length known)."""


async def _record(request: web.Request, job_id: str) -> contract.JobRecord:
    dispatcher = request.app[DISPATCHER]
    record = dispatcher.index.get(job_id)
    if record is None:
        got = await dispatcher.store.get(job_id)
        record = got[0] if got else None
    if record is None:
        raise error(404, "not_found", f"no job {job_id}")
    return record


def _refused(exc: outputs.OutputError) -> web.HTTPException:
    if isinstance(exc, outputs.OutputRejected):
        return error(409, "rejected", str(exc))
    return error(404, "not_found", str(exc))


async def list_artifacts(request: web.Request) -> web.Response:
    """The artifacts the job's accepted attempt saved: name, attempt, sha256, size, problem."""
    query(request, ())
    job_id = job_id_of(request)
    record = await _record(request, job_id)
    try:
        found = await outputs.artifacts(request.app[DISPATCHER].store.js, record)
    except outputs.OutputError as exc:
        raise _refused(exc) from None
    body = responses.Artifacts(job_id=job_id, attempt=record.result_attempt or 0, artifacts=found)
    return web.json_response(body.model_dump(mode="json"))


async def get_artifact(request: web.Request) -> web.StreamResponse:
    """The bytes of one artifact of the job's accepted attempt, once they are checked."""
    query(request, ())
    job_id = job_id_of(request)
    name = request.match_info["name"]
    if not outputs.valid_name(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise bad_param(
            "name",
            f"{shown!r} is not an artifact name (path segments of letters, digits "
            f"and -_=., at most {contract.MAX_ARTIFACT_NAME_CHARS} characters)",
        )
    record = await _record(request, job_id)
    try:
        data = await outputs.artifact(request.app[DISPATCHER].store.js, record, name)
    except outputs.OutputError as exc:
        raise _refused(exc) from None
    digest = hashlib.sha256(data).digest()
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name.rsplit("/", 1)[-1]}"',
            "Repr-Digest": f"sha-256=:{base64.b64encode(digest).decode()}:",
            "ETag": f'"{digest.hex()}"',
        }
    )
    response.content_length = len(data)
    await response.prepare(request)
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_BYTES):
        await response.write(view[start : start + CHUNK_BYTES])
    await response.write_eof()
    return response
