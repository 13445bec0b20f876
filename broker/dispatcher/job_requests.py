"""What submitters may ask of one job (cancel it, re-drive it when dead), answered by every
dispatcher replica in one queue group. Submitters read job records but never write them: the
request names the job, and the replica changes the record with a compare-and-set, which the
leader then acts on like any other change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Self

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from broker import contract, store

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
        if got is None:
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


class JobRequestServer:
    """Serves ``contract.job_request_subject(op)`` for every op in CHANGES."""

    def __init__(self, nc: NATS, st: store.Store) -> None:
        self._nc = nc
        self._store = st
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Self:
        for op in CHANGES:
            self._subs.append(await self._nc.subscribe(
                contract.job_request_subject(op), queue=QUEUE_GROUP, cb=self._on_request))
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        task = asyncio.create_task(self._serve(msg), name="job-request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        op = msg.subject.rpartition(".")[2]
        try:
            request = contract.JobRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            reply = contract.JobRequestReply(error=f"invalid {op} request: {exc.errors()[0]['msg']}")
        else:
            try:
                reply = await apply(self._store, request.job_id, CHANGES[op])
            except Exception as exc:  # NATS trouble: say so, the caller may try again
                reply = contract.JobRequestReply(
                    error=f"the dispatcher could not {op} {request.job_id}: {exc}")
            log.info("job_request", op=op, job_id=request.job_id, reason=reply.error or "done")
        with contextlib.suppress(Exception):
            await self._nc.publish(msg.reply, reply.model_dump_json().encode())
