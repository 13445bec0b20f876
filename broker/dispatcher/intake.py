"""Intake: turn submissions on ``jobq.submit.<queue>`` into durable job records.

A submission is acked only once its record is stored, so a crash in between loses nothing (the
message is redelivered and the second ``create`` finds the record). Whatever its bytes, subject
or headers, a submission that cannot be parsed or validated is dead-lettered on its first
delivery (the letter bounded in size, the whole original in object store ``jobq_dead``), then
terminated: never retried. Only infrastructure errors (the store unavailable) lead to a
redelivery, at most ``contract.SUBMIT_MAX_DELIVER`` deliveries in all; a submission JetStream
gives up on then is dead-lettered by ``broker.dispatcher.undeliverable``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from nats.aio.msg import Msg

from broker import contract, store
from broker.dispatcher import pull
from broker.dispatcher.lease import LeaseLost

log = structlog.get_logger("jobq.intake")


class Intake:
    def __init__(
        self,
        st: store.Store,
        *,
        on_job: Callable[[str], None],
        on_rejected: Callable[[str], None] | None = None,
        fence: Callable[[], int] | None = None,
    ) -> None:
        self._store = st
        self._fence = fence or (lambda: 0)
        """The leader's lease check (docs/design/dispatcher.md): our epoch, or LeaseLost."""
        self._on_job = on_job
        self._on_rejected = on_rejected or (lambda _reason: None)

    async def run(self, stop: asyncio.Event) -> None:
        puller = pull.Puller(
            self._store.nc, stream=contract.STREAM_SUBMIT, consumer=contract.CONSUMER_DISPATCHER
        )
        await puller.consume(stop, self._handle_or_nak, what="intake")

    async def _handle_or_nak(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except LeaseLost:  # no longer the leader: given back for whoever leads next
            delivered = msg.metadata.num_delivered if msg.metadata else 1
            log.info("submission_released", subject=contract.clip(msg.subject, 256), delivered=delivered)
            with contextlib.suppress(Exception):
                # With a delay, not at once: this dispatcher may pull a few more times before it
                # has stopped, and each redelivery counts against max_deliver.
                await msg.nak(delay=redelivery_delay(delivered))
        except Exception as exc:  # the store failed: redelivered after a pause
            delivered = msg.metadata.num_delivered if msg.metadata else 1
            log.error(
                "submission_failed",
                subject=contract.clip(msg.subject, 256),
                error=contract.clip(repr(exc), 500),
                delivered=delivered,
                max_deliver=contract.SUBMIT_MAX_DELIVER,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=redelivery_delay(delivered))

    async def handle(self, msg: Msg) -> None:
        self._fence()
        try:
            spec = contract.parse_submission(msg.data, subject=msg.subject)
        except Exception as exc:  # any verdict on the message itself is final: never a retry
            why = str(exc) if isinstance(exc, contract.SubmissionError) else f"unreadable: {exc!r}"
            await self._reject(msg, why)
            return
        if spec.idempotency_key:
            owner = await self._store.claim_idempotency_key(spec.idempotency_key, job_id=spec.id)
            if owner != spec.id:
                await self._duplicate(msg, spec, f"idempotency key already used by job {owner}")
                return
        now = contract.utcnow()
        submitted = msg.metadata.timestamp if msg.metadata and msg.metadata.timestamp else now
        epoch = self._fence()
        record = contract.JobRecord(spec=spec, submitted_at=submitted, updated_at=now, epoch=epoch)
        if await self._store.create(record) is None:
            existing = await self._store.get(spec.id)
            same = existing is not None and existing[0].spec == spec
            await self._duplicate(
                msg,
                spec,
                "already submitted" if same else "job id reused with a different spec; the first one stands",
            )
            return
        await self._store.publish_event(
            contract.JobEvent(
                job_id=spec.id,
                type=contract.EventType.ACCEPTED,
                phase=contract.JobPhase.QUEUED,
                message=f"queue {spec.queue}",
                epoch=epoch,
            )
        )
        await msg.ack()
        log.info(
            "job_accepted", job_id=spec.id, queue=spec.queue, task=spec.task or " ".join(spec.command or ())
        )
        self._on_job(spec.id)

    async def _duplicate(self, msg: Msg, spec: contract.JobSpec, why: str) -> None:
        await self._store.publish_event(
            contract.JobEvent(job_id=spec.id, type=contract.EventType.DUPLICATE, message=why)
        )
        await msg.ack()
        log.info("job_duplicate", job_id=spec.id, reason=why)

    async def _reject(self, msg: Msg, why: str) -> None:
        seq = msg.metadata.sequence.stream if msg.metadata else 0
        letter = contract.DeadLetter.of_original(
            msg.data,
            job_id=contract.guess_job_id(msg.data),
            reason=contract.FailureReason.INVALID,
            message=why,
            subject=msg.subject,
            headers=msg.headers or {},
            stream_seq=seq or None,
        )
        await self._store.publish_dead_letter(letter, msg_id=f"invalid-{seq}")
        await msg.term()
        self._on_rejected(why)
        log.warning(
            "submission_rejected",
            job_id=letter.job_id,
            subject=letter.subject,
            reason="invalid",
            error=letter.message,
            stream_seq=seq,
            size=letter.size,
        )


def redelivery_delay(delivered: int) -> float:
    """Pause before the next delivery of a submission that hit an infrastructure error."""
    delays = contract.SUBMIT_REDELIVERY_DELAYS_S
    return delays[min(max(delivered, 1), len(delays)) - 1]
