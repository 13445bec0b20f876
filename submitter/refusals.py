"""Submissions the dispatcher's intake refused: a dead letter on ``jobq.dead.<reason>`` (reason
``refused``: the queue's operator policy, JOBQ_QUEUE_POLICY; or ``invalid``) and no record, so the
job never runs and the jobs bucket never hears of it.

What ``JobqClient.wait`` pays for noticing them, per call (not per job): one core NATS
subscription to ``jobq.dead.>`` (letters published while it waits), made before anything else;
if a waited id has no record once its KV watch has read the bucket, one direct read of the newest
letter of each reason (the refusal of a job submitted just before); and only if an id still has no
record SCAN_AFTER_S later, one read-back of the newest LOOKBACK letters (a refusal among others).
A letter counts only while its job id has no record (a refused submission that names a recorded
job's id changes nothing for that job).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Container, Coroutine, Mapping
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from pydantic import ValidationError

from broker import contract
from broker.readmodel import deadletters
from submitter.errors import JobRefused

REASONS = frozenset({contract.FailureReason.REFUSED, contract.FailureReason.INVALID})
"""Letters that mean "no record, and there will be none": judged at intake, never retried."""
SCAN_AFTER_S = 2.0
"""A waited job still without a record this long after ``wait`` began: read back LOOKBACK letters."""
LOOKBACK = 100
"""Letters ``wait`` reads back, once per call, when a waited job has had no record for a while."""
STATUS_LOOKBACK = 1000
"""Letters ``JobqClient.refusal`` (``jobq status``/``result`` of an unknown id) reads back."""
SEQ_LOOKBACK = 32
"""Letters read back to find the stream sequence of one that arrived live (just published)."""


def letter_about(data: bytes, job_ids: Container[str] | None) -> contract.DeadLetter | None:
    """The refusal letter in ``data`` if it names one of ``job_ids`` (None: any job), else None."""
    try:
        letter = contract.DeadLetter.model_validate_json(data)
    except ValidationError:
        return None
    if (
        letter.reason in REASONS
        and letter.job_id is not None
        and (job_ids is None or letter.job_id in job_ids)
    ):
        return letter
    return None


async def find(
    js: JetStreamContext, job_ids: Collection[str], *, limit: int
) -> dict[str, deadletters.StoredDeadLetter]:
    """The newest refusal letter naming each of ``job_ids`` among the newest ``limit`` letters."""
    found, _ = await deadletters.newest(js, limit=limit)
    newest: dict[str, deadletters.StoredDeadLetter] = {}
    for item in found:
        letter = item.letter
        job_id = letter.job_id
        if letter.reason in REASONS and job_id is not None and job_id in job_ids and job_id not in newest:
            newest[job_id] = item
    return newest


async def last_of_reasons(js: JetStreamContext) -> list[deadletters.StoredDeadLetter]:
    """The newest letter of each reason in REASONS (one direct read each, concurrently)."""

    async def last(reason: contract.FailureReason) -> deadletters.StoredDeadLetter | None:
        try:
            raw = await js.get_last_msg(contract.STREAM_DEAD, contract.dead_subject(reason.value))
        except nats.js.errors.NotFoundError:
            return None
        letter = letter_about(raw.data or b"", None)
        return deadletters.StoredDeadLetter(seq=raw.seq or 0, letter=letter) if letter else None

    found = await asyncio.gather(*(last(r) for r in sorted(REASONS)))
    return [item for item in found if item is not None]


async def seq_of(js: JetStreamContext, letter: contract.DeadLetter) -> int | None:
    """The stream sequence of a letter that arrived on a core subscription (it has none)."""
    found, _ = await deadletters.newest(js, limit=SEQ_LOOKBACK)
    for item in found:
        if (
            item.letter.job_id == letter.job_id
            and item.letter.at == letter.at
            and item.letter.sha256 == letter.sha256
        ):
            return item.seq
    return None


class Watch:
    """The refusals of one ``wait`` call: ``start`` subscribes; ``judge`` (once the KV watch has
    read the bucket, ``read``) reads back the letters of ids without a record, then raises
    JobRefused for the first letter whose id is still waited for and has no record."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        *,
        pending: Collection[str],
        recorded: Collection[str],
        done: Mapping[str, contract.JobRecord],
        get: Callable[[str], Awaitable[contract.JobRecord | None]],
    ) -> None:
        self._nc, self._js = nc, js
        self._pending, self._recorded, self._done = pending, recorded, done
        self._get = get
        self._letters: asyncio.Queue[tuple[contract.DeadLetter, int | None]] = asyncio.Queue()
        self._sub: Subscription | None = None
        self.read = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(contract.DEAD_WILDCARD, cb=self._on_letter)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_letter(self, msg: Msg) -> None:
        letter = letter_about(msg.data, self._pending)
        if letter is not None:
            self._letters.put_nowait((letter, None))

    async def judge(self) -> None:
        await self.read.wait()
        if self._unrecorded():  # letters published before the subscription: the newest first
            for item in await last_of_reasons(self._js):
                self._letters.put_nowait((item.letter, item.seq))
        scan_at: float | None = asyncio.get_running_loop().time() + SCAN_AFTER_S
        while True:
            try:
                timeout = None if scan_at is None else max(0.0, scan_at - asyncio.get_running_loop().time())
                letter, seq = await asyncio.wait_for(self._letters.get(), timeout)
            except TimeoutError:  # still no record: was it refused among others, before we looked?
                scan_at = None
                if unrecorded := self._unrecorded():
                    for item in (await find(self._js, unrecorded, limit=LOOKBACK)).values():
                        self._letters.put_nowait((item.letter, item.seq))
                continue
            job_id = letter.job_id or ""
            if job_id not in self._pending or job_id in self._recorded or await self._get(job_id) is not None:
                continue
            seq = seq if seq is not None else await seq_of(self._js, letter)
            others = [i for i in self._pending if i != job_id]
            raise JobRefused(letter, seq=seq, done=self._done, pending=others)

    def _unrecorded(self) -> set[str]:
        return {i for i in self._pending if i not in self._recorded}


async def first_of(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines until the first one returns or raises; cancel the others."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        next(iter(finished)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
