"""What submitters may ask of one job (cancel it, re-drive it when dead), answered by every
dispatcher replica in one queue group. Submitters read job records but never write them: the
request names the job, and the replica changes the record with a compare-and-set, which the
leader then acts on like any other change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from broker import contract, store
from broker.responder import Responder

log = structlog.get_logger("jobq.dispatcher.requests")

QUEUE_GROUP = "jobq-dispatchers"
OPS = ("cancel", "retry")
Change = Callable[[contract.JobRecord], contract.JobRecord | str | None]
"""The new record, an error to report, or None when there is nothing to change."""


def cancel(record: contract.JobRecord) -> contract.JobRecord | str | None:
    if record.phase.is_terminal or record.cancel_requested:
        return None
    return record.cancelling(now=contract.utcnow())


def retry(record: contract.JobRecord) -> contract.JobRecord | str | None:
    if record.phase != contract.JobPhase.DEAD:
        return f"job {record.spec.id} is {record.phase}, not dead"
    return record.redriven(now=contract.utcnow())


CHANGES: dict[str, Change] = {"cancel": cancel, "retry": retry}


async def apply(st: store.Store, job_id: str, change: Change, *, tries: int = 20) -> contract.JobRequestReply:
    """``change`` applied to the stored record, retried while the record keeps changing."""
    for _ in range(tries):
        got = await st.get(job_id)
        if got is None or got[0].expired:  # expiring: gone (docs/design/retention.md)
            return contract.JobRequestReply(error=f"no job {job_id}", not_found=True)
        record, revision = got
        changed = change(record)
        if changed is None:
            return contract.JobRequestReply(record=record)
        if isinstance(changed, str):
            return contract.JobRequestReply(record=record, error=changed)
        try:
            await st.update(changed, revision=revision)
        except store.Conflict:
            await asyncio.sleep(0.05)
            continue
        return contract.JobRequestReply(record=changed)
    return contract.JobRequestReply(error=f"could not change {job_id}: its record kept changing")


def server(nc: NATS, st: store.Store) -> Responder:
    """Serves ``contract.job_request_subject(op)`` for every op in CHANGES (start it)."""
    return Responder(nc, [contract.job_request_subject(op) for op in CHANGES], queue=QUEUE_GROUP,
                     name="job-request", answer=lambda msg: _reply(st, msg))


async def _reply(st: store.Store, msg: Msg) -> bytes:
    op = msg.subject.rpartition(".")[2]
    try:
        request = contract.JobRequest.model_validate_json(msg.data)
    except ValidationError as exc:
        reply = contract.JobRequestReply(error=f"invalid {op} request: {exc.errors()[0]['msg']}")
    else:
        try:
            reply = await apply(st, request.job_id, CHANGES[op])
        except Exception as exc:  # NATS trouble: say so, the caller may try again
            reply = contract.JobRequestReply(
                error=f"the dispatcher could not {op} {request.job_id}: {exc}")
        log.info("job_request", op=op, job_id=request.job_id, reason=reply.error or "done")
    return reply.model_dump_json().encode()
