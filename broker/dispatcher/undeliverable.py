"""Submissions JetStream gave up on: dead-lettered from its MAX_DELIVERIES advisory.

The dispatcher's consumer delivers a submission at most ``contract.SUBMIT_MAX_DELIVER`` times.
When the last delivery ends without an ack (the store stayed unavailable, a pass crashed, or the
client library could not even hand the message over), JetStream leaves the message in the
work-queue stream on purpose and publishes an advisory with its stream sequence. Stream
``JOBQ_ADVISORIES`` keeps those advisories, so none is missed while no dispatcher leads.

The leader reads each advisory, reads the submission by sequence, dead-letters it (reason
``undeliverable``, the whole original in object store ``jobq_dead``), deletes it from
``JOBQ_SUBMIT`` and only then acks the advisory: a crash in between repeats the work, and the
letter's Nats-Msg-Id (``undeliverable-<seq>``) de-duplicates it. A submission whose job record
exists was handled by a late delivery after all; it is only deleted.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, ValidationError

from broker import contract, store
from broker.dispatcher import pull

log = structlog.get_logger("jobq.undeliverable")


class MaxDeliveriesAdvisory(BaseModel):
    """The fields jobq reads of JetStream's ``io.nats.jetstream.advisory.v1.max_deliver``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0


class Undeliverable:
    def __init__(self, st: store.Store) -> None:
        self._store = st

    async def run(self, stop: asyncio.Event) -> None:
        puller = pull.Puller(
            self._store.nc, stream=contract.STREAM_ADVISORIES, consumer=contract.CONSUMER_DISPATCHER, batch=16
        )
        await puller.consume(stop, self._handle_or_nak, what="max-deliveries advisories")

    async def _handle_or_nak(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception as exc:  # the store failed: the advisory comes back
            log.error("undeliverable_failed", error=contract.clip(repr(exc), 500))
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)

    async def handle(self, msg: Msg) -> None:
        try:
            advisory = MaxDeliveriesAdvisory.model_validate_json(msg.data)
        except ValidationError:
            log.error("advisory_unreadable", data=contract.clip(msg.data.decode(errors="replace"), 500))
            await msg.term()
            return
        if (advisory.stream, advisory.consumer) == (contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER):
            await self.dead_letter(advisory.stream_seq, deliveries=advisory.deliveries)
        await msg.ack()

    async def dead_letter(self, seq: int, *, deliveries: int) -> contract.DeadLetter | None:
        """Dead-letter and delete submission ``seq``; None when there is nothing to do."""
        raw = await self._store.submission_at(seq)
        if raw is None:
            log.info("undeliverable_gone", stream_seq=seq)
            return None
        data = bytes(raw.data or b"")
        subject = raw.subject or ""
        try:
            spec = contract.parse_submission(data, subject=subject)
        except Exception as exc:
            verdict = f"it is invalid: {exc}"
            job_id = contract.guess_job_id(data)
        else:
            if await self._store.get(spec.id) is not None:
                # A late delivery recorded it (or found it a duplicate) after all.
                await self._store.delete_submission(seq)
                log.info("undeliverable_recorded_after_all", stream_seq=seq, job_id=spec.id)
                return None
            verdict = "the job is valid but was never recorded: publish the original again to run it"
            job_id = spec.id
        letter = contract.DeadLetter.of_original(
            data,
            job_id=job_id,
            reason=contract.FailureReason.UNDELIVERABLE,
            message=f"not processed in {deliveries or contract.SUBMIT_MAX_DELIVER} deliveries; {verdict}",
            subject=subject,
            headers=dict(raw.headers or {}),
            stream_seq=seq,
        )
        await self._store.publish_dead_letter(letter, msg_id=f"undeliverable-{seq}")
        await self._store.delete_submission(seq)
        log.warning(
            "submission_undeliverable",
            stream_seq=seq,
            job_id=letter.job_id,
            subject=letter.subject,
            deliveries=deliveries,
            size=letter.size,
        )
        return letter
