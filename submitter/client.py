"""The Python SDK: submit jobs, follow them, read their results.

    async with JobqClient("nats://127.0.0.1:4222") as client:
        handle = await client.submit(task="sklearn.train", args={"dataset": "digits"})
        result = await handle.result(timeout=120)
        print(result.output["accuracy"])

Submissions are JetStream publishes with ``Nats-Msg-Id`` set to the idempotency key (or the job
id), retried through leader elections; the dispatcher runs a key once however often it is sent.

A job's outputs are read from its accepted attempt only (the record's ``result_attempt``): its
result (``result``, ``result_of``) and its artifacts (``artifacts``, ``artifact``), each checked
against the writer the dispatcher accepted, so what a superseded attempt stored is never handed
out; its progress (``progress``, ``status``) is its current attempt's only, and so is its live
checkpoint (``checkpoint``, ``status``). Those reads are in
``submitter/reading.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Self

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from broker import contract, natsutil
from submitter import reading, refusals, specs
from submitter.errors import (
    ArtifactNotFound,
    DispatcherUnavailable,
    InvalidJob,
    JobFailed,
    JobNotFound,
    JobqError,
    JobRefused,
    LogUnavailable,
    OutputRejected,
    WaitTimeout,
)
from submitter.handles import JobHandle
from submitter.logtail import unseen_tail
from submitter.reading import ArtifactInfo, Checkpoint, JobStatus, Progress
from submitter.specs import new_job_id

__all__ = [
    "ArtifactInfo",
    "ArtifactNotFound",
    "Checkpoint",
    "DispatcherUnavailable",
    "InvalidJob",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobRefused",
    "JobStatus",
    "JobqClient",
    "JobqError",
    "LogUnavailable",
    "OutputRejected",
    "Progress",
    "WaitTimeout",
    "new_job_id",
    "unseen_tail",
]

RECORD_GRACE_S = 15.0
"""How long ``logs(follow=True)`` waits for the record of a job it cannot find yet (the
dispatcher records a published job when it takes it in) before it says JobNotFound."""


class JobqClient(reading.Reading):
    def __init__(self, url: str = contract.DEFAULT_NATS_URL, *, name: str = "jobq-client",
                 auth: Mapping[str, Any] | None = None,
                 nats_options: Mapping[str, Any] | None = None) -> None:
        """``auth``: nats.connect credentials (default: JOBQ_NATS_* in the environment);
        ``nats_options``: more nats.connect options (``tls``: an ssl.SSLContext), over the
        environment's."""
        self.url, self.name, self.auth = url, name, auth
        self.nats_options = dict(nats_options or {})
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None

    async def __aenter__(self) -> Self:
        self._nc = await natsutil.connect(self.url, name=self.name, auth=self.auth, reconnect_forever=False,
                                          nats_options=self.nats_options)
        self._js = self._nc.jetstream(timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise JobqError("use the client inside 'async with JobqClient(url) as client'")
        return self._js

    @property
    def nc(self) -> NATS:
        assert self._nc is not None
        return self._nc

    # --- submitting -----------------------------------------------------------------------

    def build_spec(self, spec: contract.JobSpec | dict[str, Any] | None = None,
                   **fields: Any) -> contract.JobSpec:
        """A validated JobSpec from a spec, a dict, or keyword fields; fills in the id. Raises
        pydantic's ValidationError, or InvalidJob when it is bigger than MAX_SUBMISSION_BYTES."""
        return specs.build_spec(spec, **fields)

    async def submit(self, spec: contract.JobSpec | dict[str, Any] | None = None, **fields: Any) -> JobHandle:
        job = self.build_spec(spec, **fields)
        headers = {contract.HEADER_MSG_ID: job.dedupe_key,
                   contract.HEADER_CONTRACT: str(contract.CONTRACT_VERSION)}
        payload = specs.payload(job)
        await natsutil.retry(
            lambda: self.js.publish(contract.submit_subject(job.queue), payload, headers=dict(headers))
        )
        return JobHandle(self, job.id)

    async def submit_many(self, specs: Iterable[contract.JobSpec | dict[str, Any]]) -> list[JobHandle]:
        return [await self.submit(spec) for spec in specs]

    # --- reading --------------------------------------------------------------------------

    async def wait(
        self,
        job_ids: Iterable[str],
        *,
        timeout: float | None = None,
        on_update: Callable[[contract.JobRecord], None] | None = None,
    ) -> dict[str, contract.JobRecord]:
        """Wait until every job is finished and return their final records; one KV watch serves
        any number of jobs. Raises WaitTimeout (``pending``: the unfinished ids) after
        ``timeout`` seconds.

        A job the dispatcher's intake refused (a dead letter, reason ``refused`` or ``invalid``,
        and no record) ends the wait at once: JobRefused for the first one seen, its ``done``
        the records of the other jobs finished by then, ``pending`` the others (they go on).
        How that costs a recorded job nothing: ``submitter/refusals.py``."""
        pending = set(job_ids)
        done: dict[str, contract.JobRecord] = {}
        recorded: set[str] = set()
        refused = refusals.Watch(self.nc, self.js, pending=pending, recorded=recorded, done=done,
                                 get=self.get)

        async def follow() -> None:
            kv = await self._jobs()
            watcher = await kv.watchall()
            try:
                async for entry in watcher:
                    if entry is None:  # the bucket is read: from here on, only changes
                        refused.read.set()
                        continue
                    if not entry.value or entry.key not in pending:
                        continue
                    recorded.add(entry.key)
                    record = contract.JobRecord.model_validate_json(entry.value)
                    if on_update is not None:
                        on_update(record)
                    if record.phase.is_terminal:
                        done[entry.key] = record
                        pending.discard(entry.key)
                        if not pending:
                            return
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

        if not pending:
            return done
        await refused.start()
        try:
            await asyncio.wait_for(refusals.first_of(follow(), refused.judge()), timeout)
        except TimeoutError:
            if len(pending) == 1:
                (only,) = pending
                message = f"job {only} not finished after {timeout:g}s; it goes on (jobq status {only})"
            else:
                names = ", ".join(sorted(pending)[:5]) + (", ..." if len(pending) > 5 else "")
                message = f"{len(pending)} jobs not finished after {timeout:g}s; they go on: {names}"
            raise WaitTimeout(message, pending=pending) from None
        finally:
            with contextlib.suppress(Exception):
                await refused.stop()
        return done

    async def refusal(self, job_id: str, *, limit: int = refusals.STATUS_LOOKBACK) -> JobRefused | None:
        """Why a job without a record has none: the intake's refusal letter naming it (among the
        newest ``limit`` dead letters), as the JobRefused to raise; None if the job has a record
        or no such letter is found. ``get()`` stays one KV read: call this when it says None."""
        found = (await refusals.find(self.js, {job_id}, limit=limit)).get(job_id)
        if found is None or await self.get(job_id) is not None:
            return None
        return JobRefused(found.letter, seq=found.seq)

    async def result(self, job_id: str, *, timeout: float | None = None) -> contract.TaskResult:
        """Wait for the job to finish and return its accepted result (see ``result_of``)."""
        return await JobHandle(self, job_id).result(timeout=timeout)

    # --- output -----------------------------------------------------------------------------

    async def read_log(self, job_id: str, *, attempt: int | None = None, offset: int = 0,
                       limit: int = 64 * 1024, timeout: float = 10.0) -> contract.LogChunk:
        """One request on ``jobq.logs``: up to ``limit`` bytes of an attempt's output from
        ``offset`` (see contract.LogChunk; broker/dispatcher/logs.py says how replies read)."""
        request = contract.LogRequest(job_id=job_id, attempt=attempt, offset=offset, limit=limit)
        try:
            reply = await self.nc.request(contract.LOGS_SUBJECT, request.model_dump_json().encode(),
                                          timeout=timeout)
        except nats.errors.NoRespondersError:
            raise DispatcherUnavailable(
                f"no dispatcher answers on {contract.LOGS_SUBJECT} (is jobq running on {self.url}?)"
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise DispatcherUnavailable(f"the dispatcher did not answer within {timeout:g}s") from None
        return contract.LogChunk.model_validate_json(reply.data)

    async def logs(self, job_id: str, *, attempt: int | None = None, follow: bool = False,
                   poll_s: float = 0.5) -> AsyncIterator[str]:
        """The output (stdout and stderr) of one attempt of a job, default the current one.

        Without ``follow``: what there is now. With ``follow``: polls every ``poll_s`` seconds
        until the attempt is over and all its output is read (an attempt not started yet is
        waited for, and so is the record of a job published a moment ago, for up to
        RECORD_GRACE_S). Raises JobNotFound, DispatcherUnavailable, or LogUnavailable when the
        output cannot be read (its ``tail`` has the lines jobq kept of a failed attempt).
        """
        offset, shown = 0, ""
        unrecorded_since: float | None = None
        asked_again = 0
        while True:
            chunk = await self.read_log(job_id, attempt=attempt, offset=offset)
            if chunk.error and chunk.finished and chunk.attempt is None:
                if await self.get(job_id) is None:
                    now = asyncio.get_running_loop().time()
                    unrecorded_since = now if unrecorded_since is None else unrecorded_since
                    if not follow or now - unrecorded_since >= RECORD_GRACE_S:
                        raise JobNotFound(f"no job {job_id}")
                    await asyncio.sleep(poll_s)  # not taken in yet: a follower waits for it
                    continue
                if chunk.not_found and asked_again < 3:
                    asked_again += 1  # recorded after the dispatcher looked: ask again
                    continue
                raise JobqError(chunk.error)
            if chunk.attempt is not None:
                attempt = chunk.attempt  # follow this attempt, even if the job moves on to another
            if chunk.error:
                if chunk.finished or not follow:
                    raise LogUnavailable(chunk.error, job_id=job_id, attempt=chunk.attempt,
                                         tail=unseen_tail(shown, chunk.tail), finished=chunk.finished)
                await asyncio.sleep(poll_s)
                continue
            more = chunk.next_offset > offset
            offset = max(offset, chunk.next_offset)
            if chunk.data:
                shown = (shown + chunk.data)[-4 * contract.LOG_TAIL_BYTES:]
                yield chunk.data
            if more:
                continue
            if chunk.finished or not follow:
                return
            await asyncio.sleep(poll_s)

    async def cancel(self, job_id: str) -> contract.JobRecord:
        """Ask the dispatcher to stop the job; it ends ``cancelled`` (no effect once finished)."""
        return await self._ask("cancel", job_id)

    async def _ask(self, op: str, job_id: str, *, timeout_s: float = 10.0) -> contract.JobRecord:
        """A JobRequest to the dispatchers (only they write records): the record it left."""
        if re.fullmatch(contract.JOB_ID_PATTERN, job_id) is None:
            raise JobNotFound(f"no job {job_id}")
        request = contract.JobRequest(job_id=job_id).model_dump_json().encode()
        try:
            msg = await self.nc.request(contract.job_request_subject(op), request, timeout=timeout_s)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            raise JobqError(f"no dispatcher answered the {op} request for {job_id} within "
                            f"{timeout_s:g} s; is one running?") from None
        reply = contract.JobRequestReply.model_validate_json(msg.data)
        if reply.not_found:
            raise JobNotFound(reply.error)
        if reply.error or reply.record is None:
            raise JobqError(reply.error or f"the dispatcher did not {op} {job_id}")
        return reply.record

    async def retry_dead(self, job_id: str) -> contract.JobRecord:
        """Re-drive a dead job: fresh budgets, same id, attempt history kept."""
        try:
            return await self._ask("retry", job_id)
        except JobNotFound:
            raise JobNotFound(
                f"no job {job_id}; an invalid submission must be fixed and submitted again") from None

