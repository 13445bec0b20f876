"""Intake: turn submissions on ``jobq.submit.<queue>`` into durable job records.

A submission is acked only once its record (and its ``accepted`` event) is stored, so a crash in
between loses nothing (the message is redelivered and finds its record). Whatever its bytes,
subject or headers, a submission that cannot be parsed or validated is dead-lettered on its first
delivery (the letter bounded in size, the whole original in object store ``jobq_dead``), then
terminated: never retried. So is a valid one that its queue's operator policy refuses
(``broker.policy``, reason ``refused``, the message naming the rule): it never gets a record.
Only infrastructure errors (the store unavailable) lead to a redelivery, at most
``contract.SUBMIT_MAX_DELIVER`` deliveries in all; a submission JetStream gives up on then
is dead-lettered by ``broker.dispatcher.undeliverable``.

Submissions are taken in batches, as many as have arrived (up to ``BATCH``), and written with
few JetStream writes per batch (``broker.dispatcher.intake_batch``): while one batch's events
are published and its messages acked, the next batch's records are created.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from nats.aio.msg import Msg

from broker import contract, policy, store
from broker.dispatcher import intake_batch, pull
from broker.dispatcher.lease import LeaseLost

log = structlog.get_logger("jobq.intake")


BATCH = 256
"""Submissions pulled per request, and the most one batch writes at once (an atomic batch holds
at most ``store.ATOMIC_BATCH_MAX``). Three batches may be unacked at once (one being recorded,
one announced, one arriving), within the consumer's max_ack_pending of 1000."""


class Intake:
    def __init__(
        self,
        st: store.Store,
        *,
        on_job: Callable[[str], None],
        on_rejected: Callable[[str], None] | None = None,
        fence: Callable[[], int] | None = None,
        queue_policy: policy.QueuePolicy | None = None,
    ) -> None:
        self._store = st
        self._policy = queue_policy
        """The operator's JOBQ_QUEUE_POLICY; None only in tests of intake alone (nothing refused)."""
        self._fence = fence or (lambda: 0)
        """The leader's lease check (docs/design/dispatcher.md): our epoch, or LeaseLost."""
        self._on_job = on_job
        self._on_rejected = on_rejected or (lambda _reason: None)
        self._announcing: asyncio.Task[None] | None = None
        """The previous batch's second stage, while the next batch's first stage runs."""

    async def run(self, stop: asyncio.Event) -> None:
        puller = pull.Puller(
            self._store.nc, stream=contract.STREAM_SUBMIT, consumer=contract.CONSUMER_DISPATCHER, batch=BATCH
        )
        try:
            await puller.consume_batches(stop, self.take, what="intake")
            await self.flush()
        finally:
            if self._announcing is not None and not self._announcing.done():
                self._announcing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._announcing
            self._announcing = None

    async def take(self, msgs: list[Msg]) -> None:
        """Take a pulled batch: record it while the previous batch is announced, then start
        announcing it (``flush`` waits for that). Failures nak what is not settled yet."""
        settled: set[int] = set()
        try:
            subs = await self._record(msgs, settled)
        except Exception as exc:
            await self._give_back(msgs, settled, exc)
            return
        await self.flush()
        if subs:
            self._announcing = asyncio.create_task(self._announce_or_give_back(msgs, settled, subs))

    async def flush(self) -> None:
        """Wait until the last batch taken is announced and acked (or given back)."""
        if self._announcing is not None:
            await self._announcing
            self._announcing = None

    async def _announce_or_give_back(
        self, msgs: list[Msg], settled: set[int], subs: list[intake_batch.Submission]
    ) -> None:
        try:
            await self._announce(subs, settled)
        except Exception as exc:
            await self._give_back(msgs, settled, exc)

    async def handle(self, msg: Msg) -> None:
        """Take one submission; an infrastructure error is raised, the message left unsettled."""
        settled: set[int] = set()
        await self._announce(await self._record([msg], settled), settled)

    async def _record(self, msgs: list[Msg], settled: set[int]) -> list[intake_batch.Submission]:
        """Judge each message: dead-letter the invalid ones, store the valid ones' keys and records."""
        self._fence()
        subs: list[intake_batch.Submission] = []
        invalid: list[tuple[Msg, str, contract.FailureReason]] = []
        for msg in msgs:
            try:
                spec = contract.parse_submission(msg.data, subject=msg.subject)
            except Exception as exc:  # any verdict on the message itself is final: never a retry
                why = str(exc) if isinstance(exc, contract.SubmissionError) else f"unreadable: {exc!r}"
                invalid.append((msg, why, contract.FailureReason.INVALID))
                continue
            refused = self._policy.refusal(spec) if self._policy is not None else None
            if refused is not None:
                invalid.append((msg, refused, contract.FailureReason.REFUSED))
                continue
            stamp = msg.metadata.timestamp if msg.metadata else None
            subs.append(intake_batch.Submission(msg, spec, submitted=stamp or contract.utcnow()))
        if invalid:
            try:
                async with asyncio.TaskGroup() as tg:
                    for msg, why, reason in invalid:
                        tg.create_task(self._reject(msg, why, reason, settled))
            except ExceptionGroup as group:  # a dead letter could not be stored: the first error
                raise group.exceptions[0] from None
        await intake_batch.record(self._store, subs, fence=self._fence)
        return subs

    async def _announce(self, subs: list[intake_batch.Submission], settled: set[int]) -> None:
        await intake_batch.announce(self._store, subs, fence=self._fence)
        for sub in subs:
            settled.add(id(sub.msg))
            assert sub.event is not None
            if sub.accepted:
                spec = sub.spec
                log.info(
                    "job_accepted",
                    job_id=spec.id,
                    queue=spec.queue,
                    task=spec.task or " ".join(spec.command or ()),
                    redelivered=sub.own_record,
                )
                self._on_job(spec.id)
            else:
                log.info("job_duplicate", job_id=sub.spec.id, reason=sub.event.message)

    async def _give_back(self, msgs: list[Msg], settled: set[int], exc: Exception) -> None:
        """Nak every message of a batch not settled yet, after a pause that grows per delivery."""
        for msg in msgs:
            if id(msg) in settled:
                continue
            delivered = msg.metadata.num_delivered if msg.metadata else 1
            subject = contract.clip(msg.subject, 256)
            if isinstance(exc, LeaseLost):  # no longer the leader: given back for whoever leads next
                log.info("submission_released", subject=subject, delivered=delivered)
            else:  # the store failed: redelivered after a pause
                log.error(
                    "submission_failed",
                    subject=subject,
                    error=contract.clip(repr(exc), 500),
                    delivered=delivered,
                    max_deliver=contract.SUBMIT_MAX_DELIVER,
                )
            with contextlib.suppress(Exception):
                # With a delay, not at once: this dispatcher may pull a few more times before it
                # has stopped, and each redelivery counts against max_deliver.
                await msg.nak(delay=redelivery_delay(delivered))

    async def _reject(self, msg: Msg, why: str, reason: contract.FailureReason, settled: set[int]) -> None:
        seq = msg.metadata.sequence.stream if msg.metadata else 0
        letter = contract.DeadLetter.of_original(
            msg.data,
            job_id=contract.guess_job_id(msg.data),
            reason=reason,
            message=why,
            subject=msg.subject,
            headers=msg.headers or {},
            stream_seq=seq or None,
        )
        await self._store.publish_dead_letter(letter, msg_id=f"{reason}-{seq}")
        await msg.term()
        settled.add(id(msg))
        self._on_rejected(why)
        log.warning(
            "submission_rejected",
            job_id=letter.job_id,
            subject=letter.subject,
            reason=str(reason),
            error=letter.message,
            stream_seq=seq,
            size=letter.size,
        )


def redelivery_delay(delivered: int) -> float:
    """Pause before the next delivery of a submission that hit an infrastructure error."""
    delays = contract.SUBMIT_REDELIVERY_DELAYS_S
    return delays[min(max(delivered, 1), len(delays)) - 1]
