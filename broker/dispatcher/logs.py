"""The log service: every dispatcher replica, leader or standby, answers LogRequest on
``contract.LOGS_SUBJECT`` (one queue group, so one replica answers each request).

A request names a job, optionally an attempt (default: the current one) and a byte offset. The
attempt's pod and node come from the job record; the bytes come from the backend
(``ClusterBackend.read_log``). How the reply reads:

* ``error`` set, ``attempt`` None and ``finished``: the request failed for good (invalid, unknown
  job, no such attempt, a job that ended without any attempt).
* ``error`` set, ``attempt`` None, not ``finished``: the job has no attempt yet (queued).
* ``data`` from ``offset`` to ``next_offset`` (bytes); ``finished``: the attempt is final (or its
  pod stopped), so once a read returns nothing, the log is drained.
* ``error`` set with an attempt: its log cannot be read. ``finished`` True: it never will be
  again (the pod or its node is gone); ``tail`` carries the last lines the record kept.
  ``finished`` False: not yet (the pod has not started) or not now (its node does not answer).
"""

from __future__ import annotations

import codecs
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from broker import contract, store
from broker.backends import base
from broker.dispatcher.index import JobIndex
from broker.responder import Responder

log = structlog.get_logger("jobq.logs")

MAX_CHUNK = 256 * 1024
"""Bytes one reply carries at most (a NATS message is 1 MiB by default)."""
QUEUE_GROUP = "jobq-logs"

Lookup = Callable[[str], Awaitable[contract.JobRecord | None]]


# --- pure parts ------------------------------------------------------------------------------


def parse_request(data: bytes) -> contract.LogRequest | contract.LogChunk:
    """The request, or the error reply to a request that is not one."""
    try:
        return contract.LogRequest.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in exc.errors()
        )
        return contract.LogChunk(job_id="", finished=True, error=f"invalid log request: {problems}")


def pick_attempt(record: contract.JobRecord, number: int | None) -> contract.Attempt | str | None:
    """The attempt asked for (default: the current one), None if there is none yet, or an error."""
    if number is None:
        return record.current
    if not 1 <= number <= len(record.attempts):
        has = f"it has {len(record.attempts)}" if record.attempts else "it has none yet"
        return f"job {record.spec.id} has no attempt {number} ({has})"
    return record.attempts[number - 1]


def complete_utf8(data: bytes) -> bytes:
    """``data`` without a multi-byte character cut off at its end (that one comes with the next
    read); unchanged when that would leave nothing."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(data, final=False)
    pending = len(decoder.getstate()[0])
    return data[: len(data) - pending] if 0 < pending < len(data) else data


def chunk_of_read(request: contract.LogRequest, attempt: contract.Attempt,
                  read: base.LogRead) -> contract.LogChunk:
    data = complete_utf8(read.data)
    return contract.LogChunk(
        job_id=request.job_id, attempt=attempt.number, pod=attempt.pod, node=attempt.node,
        offset=request.offset, data=data.decode(errors="replace"), next_offset=request.offset + len(data),
        finished=attempt.state.is_final or not read.running)


def chunk_of_unavailable(request: contract.LogRequest, attempt: contract.Attempt,
                         why: str) -> contract.LogChunk:
    final = attempt.state.is_final
    if final:
        error = f"the log of attempt {attempt.number} is gone ({why})"
    elif attempt.state in (contract.AttemptState.CREATING, contract.AttemptState.PENDING):
        error = f"attempt {attempt.number} has not started yet" + (
            f": {attempt.waiting_reason}" if attempt.waiting_reason else "")
    else:
        error = f"the log of attempt {attempt.number} cannot be read now ({why})"
    return contract.LogChunk(
        job_id=request.job_id, attempt=attempt.number, pod=attempt.pod, node=attempt.node,
        offset=request.offset, next_offset=request.offset, finished=final, error=error,
        tail=attempt.log_tail)


# --- answering -------------------------------------------------------------------------------


def record_lookup(index: JobIndex, st: store.Store) -> Lookup:
    """The index's record, else the store's (a job newer than the index, or the index loading)."""

    async def lookup(job_id: str) -> contract.JobRecord | None:
        record = index.get(job_id)
        if record is None:
            got = await st.get(job_id)
            record = got[0] if got else None
        return None if record is None or record.expired else record

    return lookup


async def answer(request: contract.LogRequest, *, lookup: Lookup,
                 backend: base.ClusterBackend) -> contract.LogChunk:
    """The reply to one request (never raises for a bad request or an unreadable log)."""
    record = await lookup(request.job_id)
    if record is None:
        return contract.LogChunk(job_id=request.job_id, finished=True, error=f"no job {request.job_id}",
                                 not_found=True)
    attempt = pick_attempt(record, request.attempt)
    if isinstance(attempt, str):
        return contract.LogChunk(job_id=request.job_id, finished=True, error=attempt)
    if attempt is None:
        ended = record.phase.is_terminal
        return contract.LogChunk(job_id=request.job_id, finished=ended, error=(
            f"job {record.spec.id} ended {record.phase} without running" if ended
            else f"job {record.spec.id} has no attempt yet ({record.phase})"))
    try:
        read = await backend.read_log(attempt.pod, node=attempt.node, offset=request.offset,
                                      limit=min(request.limit, MAX_CHUNK))
    except base.BackendError as exc:
        return chunk_of_unavailable(request, attempt, str(exc))
    return chunk_of_read(request, attempt, read)


def server(nc: NATS, *, lookup: Lookup, backend: base.ClusterBackend) -> Responder:
    """Serves ``answer`` on ``contract.LOGS_SUBJECT`` (start it); requests are answered concurrently."""
    return Responder(nc, [contract.LOGS_SUBJECT], queue=QUEUE_GROUP, name="log-request",
                     answer=_Replies(nc, lookup=lookup, backend=backend).reply)


class _Replies:
    def __init__(self, nc: NATS, *, lookup: Lookup, backend: base.ClusterBackend) -> None:
        self._nc = nc
        self._lookup = lookup
        self._backend = backend

    async def reply(self, msg: Msg) -> bytes:
        parsed = parse_request(msg.data)
        if isinstance(parsed, contract.LogChunk):
            return parsed.model_dump_json().encode()
        return await self._reply_for(parsed)

    async def _reply_for(self, request: contract.LogRequest) -> bytes:
        payload = b""
        for _ in range(4):  # a reply over the NATS limit (escaped control bytes): ask for less
            try:
                chunk = await answer(request, lookup=self._lookup, backend=self._backend)
            except Exception as exc:
                log.warning("log_request_failed", job_id=request.job_id, attempt=request.attempt,
                            error=repr(exc))
                chunk = contract.LogChunk(job_id=request.job_id, attempt=request.attempt,
                                          offset=request.offset, next_offset=request.offset,
                                          error=f"the dispatcher could not read the log: {exc}")
            payload = chunk.model_dump_json().encode()
            if len(payload) <= self._nc.max_payload or request.limit <= 1024:
                break
            request = request.model_copy(update={"limit": max(1024, min(request.limit, MAX_CHUNK) // 4)})
        return payload
