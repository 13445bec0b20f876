"""The JSON API: jobs (with their progress and checkpoints), nodes, queues, dead letters, live
events, and two guarded mutations; a job's artifacts are served by ``artifacts.py``.

Reads come from the dispatcher's in-memory job index (every dispatcher, leader or standby, keeps
one), the backend's node list and JetStream, through the read model (``broker.readmodel``);
answers are the typed models of ``responses.py``. Mutations are compare-and-set writes of the job
record, exactly what ``jobq cancel`` and ``jobq dlq retry`` do; the leader acts on them. Errors
are JSON ``{"error": <code>, "message": <sentence>, "param": <name|null>}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime as dt
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from broker import contract, store
from broker.dispatcher import logs
from broker.http import access, responses, streams
from broker.http.keys import DISPATCHER, HUB, METRICS
from broker.http.params import JOB_ID, QUEUE, bad_param, error, int_param, job_id_of, query
from broker.readmodel import checkpoints, deadletters, progress, recovery, retries
from broker.readmodel import events as event_log

# --- answers ----------------------------------------------------------------------------------


def answer(body: BaseModel, *, status: int = 200) -> web.Response:
    """A JSON response from a response model (broker/http/responses.py)."""
    return web.json_response(body.model_dump(mode="json"), status=status)


def _record(request: web.Request, job_id: str) -> contract.JobRecord | None:
    record = request.app[DISPATCHER].index.get(job_id)
    return None if record is None or record.expired else record  # expiring: gone for readers


async def _fresh(request: web.Request, job_id: str) -> contract.JobRecord | None:
    got = await request.app[DISPATCHER].store.get(job_id)
    return got[0] if got and not got[0].expired else None


# --- jobs -----------------------------------------------------------------------------------


def _cursor_encode(record: contract.JobRecord) -> str:
    raw = json.dumps([record.submitted_at.isoformat(), record.spec.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        return dt.datetime.fromisoformat(at), str(job_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise bad_param("cursor", "cursor is not one this API returned (use next_cursor as given)") from exc


async def list_jobs(request: web.Request) -> web.Response:
    params = query(request, ("state", "queue", "limit", "offset", "cursor"))
    states: set[str] = set()
    for state in filter(None, params.get("state", "").split(",")):
        if state not in {p.value for p in contract.JobPhase}:
            raise bad_param(
                "state",
                f"unknown state {state!r}; states are {', '.join(p.value for p in contract.JobPhase)}",
            )
        states.add(state)
    queue = params.get("queue")
    if queue is not None and not QUEUE.match(queue):
        raise bad_param("queue", f"{queue!r} is not a queue name")
    limit = int_param(params, "limit", default=50, low=1, high=500)
    offset = int_param(params, "offset", default=0, low=0, high=10**9)
    if "cursor" in params and "offset" in params:
        raise bad_param("cursor", "give either cursor or offset, not both")
    records = [
        r
        for r in request.app[DISPATCHER].index.records()
        if (not states or r.phase.value in states) and (queue is None or r.spec.queue == queue)
        and not r.expired  # being deleted: gone for readers (docs/design/retention.md)
    ]
    records.sort(key=lambda r: (r.submitted_at, r.spec.id), reverse=True)
    total = len(records)
    if "cursor" in params:
        after = _cursor_decode(params["cursor"])
        records = [r for r in records if (r.submitted_at, r.spec.id) < after]
    else:
        records = records[offset:]
    page = records[:limit]
    more = len(records) > limit
    js = request.app[DISPATCHER].store.js
    running, live = await asyncio.gather(progress.of_running(js, page), checkpoints.of_running(js, page))
    return answer(
        responses.JobPage(
            jobs=[responses.JobSummary.of(r, progress=running.get(r.spec.id), checkpoint=live.get(r.spec.id))
                  for r in page],
            total=total,
            limit=limit,
            offset=None if "cursor" in params else offset,
            next_cursor=_cursor_encode(page[-1]) if more and page else None,
        )
    )


async def get_job(request: web.Request) -> web.Response:
    query(request, ())
    job_id = job_id_of(request)
    record = _record(request, job_id) or await _fresh(request, job_id)
    if record is None:
        raise error(404, "not_found", f"no job {job_id}")
    js = request.app[DISPATCHER].store.js
    found = await event_log.job_events(js, job_id)
    reported, live = await asyncio.gather(progress.current(js, record), checkpoints.current(js, record))
    return answer(
        responses.JobDetail(
            job=responses.JobSummary.of(record, progress=reported, checkpoint=live),
            record=record,
            attempts=[responses.AttemptView.of(a) for a in record.attempts],
            events=found,
        )
    )


async def job_log(request: web.Request) -> web.Response:
    """Output of one attempt (default the current one) from a byte offset: a LogChunk."""
    params = query(request, ("attempt", "offset", "limit"))
    job_id = job_id_of(request)
    number = int_param(params, "attempt", default=0, low=1, high=100_000) if "attempt" in params else None
    offset = int_param(params, "offset", default=0, low=0, high=2**53)
    limit = int_param(params, "limit", default=64 * 1024, low=1, high=logs.MAX_CHUNK)
    dispatcher = request.app[DISPATCHER]
    lookup = logs.record_lookup(dispatcher.index, dispatcher.store)
    record = await lookup(job_id)
    if record is None:
        raise error(404, "not_found", f"no job {job_id}")
    picked = logs.pick_attempt(record, number)
    if isinstance(picked, str):
        raise error(404, "not_found", picked, param="attempt")
    chunk = await logs.answer(
        contract.LogRequest(job_id=job_id, attempt=number, offset=offset, limit=limit),
        lookup=lookup,
        backend=dispatcher.backend,
    )
    return web.json_response(chunk.model_dump(mode="json"))


# --- nodes and queues -----------------------------------------------------------------------


async def list_nodes(request: web.Request) -> web.Response:
    query(request, ())
    dispatcher, m = request.app[DISPATCHER], request.app[METRICS]
    nodes = await dispatcher.backend.list_nodes()
    m.observe_nodes(nodes)
    running = collections.Counter(
        r.current.node
        for r in dispatcher.index.records()
        if r.phase == contract.JobPhase.RUNNING and r.current and r.current.node
    )
    return answer(
        responses.Nodes(
            nodes=[
                responses.Node(
                    name=n.name,
                    ready=n.ready,
                    pods=n.pods,
                    running_attempts=running[n.name],
                    capacity=n.capacity,
                    allocated_cpu=round(n.allocated_cpu, 3),
                    allocated_memory=n.allocated_memory,
                    last_heartbeat=n.last_heartbeat,
                    not_ready_since=n.not_ready_since,
                    not_ready_reason=n.not_ready_reason,
                    attempt_heartbeats=dispatcher.heartbeats.nodes.evidence(n.name).value,
                )
                for n in nodes
            ],
            failures=recovery.failure_report(m.failures, dispatcher.index.records(), lost_at=m.lost_at),
        )
    )


async def list_queues(request: web.Request) -> web.Response:
    params = query(request, ("window",))
    window = int_param(params, "window", default=900, low=60, high=7 * 86400)
    dispatcher, m = request.app[DISPATCHER], request.app[METRICS]
    await m.refresh()
    records = list(dispatcher.index.records())
    limits = dispatcher.settings.dispatcher.queue_limits
    by_queue: dict[str, list[contract.JobRecord]] = collections.defaultdict(list)
    for record in records:
        by_queue[record.spec.queue].append(record)
    queues: list[responses.Queue] = []
    totals: collections.Counter[str] = collections.Counter({p.value: 0 for p in contract.JobPhase})
    for name in sorted(set(by_queue) | set(m.pending) | set(limits)):
        phases = collections.Counter(r.phase.value for r in by_queue[name])
        totals.update(phases)
        by_reason: collections.Counter[str] = collections.Counter()
        for record in by_queue[name]:
            by_reason.update(record.retries)
        pending = m.pending.get(name, 0)
        queues.append(
            responses.Queue(
                queue=name,
                pending=pending,
                queued=phases["queued"],
                depth=pending + phases["queued"],
                running=phases["running"],
                jobs={p.value: phases[p.value] for p in contract.JobPhase},
                retries=dict(sorted(by_reason.items())),
                limit=limits.get(name),
            )
        )
    return answer(
        responses.Queues(
            queues=queues,
            totals=dict(totals),
            dead_letters=m.dead_letters,
            retry_timeline=retries.timeline(records, now=contract.utcnow(), window_s=window),
        )
    )


# --- dead letters ---------------------------------------------------------------------------


async def list_dead_letters(request: web.Request) -> web.Response:
    params = query(request, ("limit", "offset", "reason"))
    limit = int_param(params, "limit", default=50, low=1, high=500)
    offset = int_param(params, "offset", default=0, low=0, high=100_000)
    reason = params.get("reason")
    if reason is not None and reason not in {r.value for r in contract.FailureReason}:
        raise bad_param(
            "reason",
            f"unknown reason {reason!r}; reasons are {', '.join(r.value for r in contract.FailureReason)}",
        )
    dispatcher = request.app[DISPATCHER]
    found, total = await deadletters.newest(dispatcher.store.js, limit=limit, offset=offset, reason=reason)
    letters = []
    for item in found:
        letter = item.letter
        record = dispatcher.index.get(letter.job_id) if letter.job_id else None
        letters.append(
            responses.DeadLetterView(
                seq=item.seq,
                job_id=letter.job_id,
                reason=letter.reason.value,
                message=letter.message,
                at=letter.at,
                attempts=len(letter.attempts),
                subject=letter.subject,
                job_phase=record.phase.value if record else None,
                retryable=record is not None and record.phase == contract.JobPhase.DEAD,
                stream_seq=letter.stream_seq,
                size=letter.size,
                sha256=letter.sha256,
                excerpt=letter.excerpt,
                original=letter.original,
            )
        )
    return answer(responses.DeadLetters(dead_letters=letters, total=total, limit=limit, offset=offset))


async def dead_letter_original(request: web.Request) -> web.Response:
    """The whole original message of the dead letter with sequence ``seq`` (the letter itself
    carries a bounded excerpt): its inline payload, or the copy in object store jobq_dead."""
    query(request, ())
    raw_seq = request.match_info["seq"]
    if not raw_seq.isdigit() or int(raw_seq) < 1:
        raise bad_param("seq", f"{raw_seq!r} is not a dead letter's sequence (a positive integer)")
    seq = int(raw_seq)
    js = request.app[DISPATCHER].store.js
    letter = await deadletters.get(js, seq)
    if letter is None:
        raise error(404, "not_found", f"no dead letter {seq}")
    data = await deadletters.original(js, letter)
    if data is None:
        raise error(404, "not_found", f"dead letter {seq} keeps no original (or it expired)")
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="dead-letter-{seq}.bin"'},
    )


# --- mutations ------------------------------------------------------------------------------


def authorize(request: web.Request) -> None:
    """Refuse cross-site requests from origins not in JOBQ_HTTP_CORS_ORIGINS (a browser on another
    site must not change jobs, token or not); the token itself is checked by ``access``."""
    origin = request.headers.get("Origin")
    if (
        origin
        and origin != "null"
        and not access.same_origin(request, origin)
        and not access.allowed_origin(request)
    ):
        raise error(403, "forbidden", "cross-origin requests may not change jobs")


async def _update(request: web.Request, job_id: str, change: Any) -> contract.JobRecord:
    """Compare-and-set ``change(record)`` (which may raise an HTTP error) until it sticks."""
    st = request.app[DISPATCHER].store
    for _ in range(20):
        got = await st.get(job_id)
        if got is None or got[0].expired:
            raise error(404, "not_found", f"no job {job_id}")
        record, revision = got
        updated: contract.JobRecord | None = change(record)
        if updated is None:
            return record
        try:
            await st.update(updated, revision=revision)
            return updated
        except store.Conflict:
            await asyncio.sleep(0.05)
    raise error(409, "conflict", f"job {job_id} kept changing; try again")


async def cancel_job(request: web.Request) -> web.Response:
    query(request, ())
    authorize(request)
    job_id = job_id_of(request)

    def change(record: contract.JobRecord) -> contract.JobRecord | None:
        if record.phase.is_terminal:
            raise error(409, "conflict", f"job {job_id} is {record.phase}; there is nothing to cancel")
        if record.cancel_requested:
            return None
        return record.cancelling(now=contract.utcnow())

    record = await _update(request, job_id, change)
    return answer(responses.JobAccepted(job=responses.JobSummary.of(record)), status=202)


async def retry_dead_letter(request: web.Request) -> web.Response:
    query(request, ())
    authorize(request)
    job_id = job_id_of(request)

    def change(record: contract.JobRecord) -> contract.JobRecord:
        if record.phase != contract.JobPhase.DEAD:
            raise error(409, "conflict", f"job {job_id} is {record.phase}, not dead")
        return record.redriven(now=contract.utcnow())

    if await _fresh(request, job_id) is None:
        raise error(
            404, "not_found", f"no job {job_id}; an invalid submission must be fixed and submitted again"
        )
    record = await _update(request, job_id, change)
    return answer(responses.JobAccepted(job=responses.JobSummary.of(record)), status=202)


# --- live events (SSE) ----------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    params = query(request, ("job_id",))
    job_filter = params.get("job_id")
    if job_filter is not None and not JOB_ID.match(job_filter):
        raise bad_param("job_id", f"{job_filter!r} is not a job id")
    hub = request.app[HUB]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **access.stream_headers(request),
        }
    )
    await response.prepare(request)
    queue = hub.subscribe()
    try:
        await response.write(b"retry: 2000\n: connected\n\n")
        while not hub.closed.is_set():
            try:
                kind, job_id, data = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if kind == streams.CLOSE:
                break
            if kind == "job" and job_filter is not None and job_id != job_filter:
                continue
            await response.write(f"event: {kind}\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass
    finally:
        hub.unsubscribe(queue)
    return response
