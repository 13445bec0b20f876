"""Intake: turn submissions on ``jobq.submit.<queue>`` into durable job records.

A submission is acked only once its record is stored, so a crash in between loses nothing (the
message is redelivered and the second ``create`` finds the record). A submission that can never
be processed is copied to the dead-letter stream with the reason, then terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import nats.errors
import structlog
from nats.aio.msg import Msg

from broker import contract, store

log = structlog.get_logger("jobq.intake")


class Intake:
    def __init__(
        self,
        st: store.Store,
        *,
        on_job: Callable[[str], None],
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self._store = st
        self._on_job = on_job
        self._on_rejected = on_rejected or (lambda _reason: None)

    async def run(self, stop: asyncio.Event) -> None:
        psub = await self._store.submissions()
        try:
            while not stop.is_set():
                try:
                    # No fetch heartbeat: with batch > 1 nats-py's lingering pull gets a shorter
                    # expiry than the heartbeat allows ("heartbeat value too large").
                    msgs = await psub.fetch(batch=64, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    return
                except nats.errors.Error as exc:
                    log.warning("intake_fetch_failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    try:
                        await self.handle(msg)
                    except Exception as exc:  # never lose it: it is redelivered after a pause
                        log.error("submission_failed", subject=msg.subject, error=repr(exc))
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=1.0)
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def handle(self, msg: Msg) -> None:
        try:
            spec = contract.parse_submission(msg.data)
        except contract.SubmissionError as exc:
            await self._reject(msg, str(exc))
            return
        if spec.idempotency_key:
            owner = await self._store.claim_idempotency_key(spec.idempotency_key, job_id=spec.id)
            if owner != spec.id:
                await self._duplicate(msg, spec, f"idempotency key already used by job {owner}")
                return
        now = contract.utcnow()
        submitted = msg.metadata.timestamp if msg.metadata and msg.metadata.timestamp else now
        record = contract.JobRecord(spec=spec, submitted_at=submitted, updated_at=now)
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
        payload = msg.data.decode("utf-8", errors="replace")
        job_id = _guess_id(msg.data)
        seq = msg.metadata.sequence.stream if msg.metadata else 0
        letter = contract.DeadLetter(
            job_id=job_id,
            reason=contract.FailureReason.INVALID,
            message=why,
            subject=msg.subject,
            payload=payload,
            headers=dict(msg.headers or {}),
        )
        await self._store.publish_dead_letter(letter, msg_id=f"invalid-{seq}")
        await msg.term()
        self._on_rejected(why)
        log.warning(
            "submission_rejected",
            job_id=job_id,
            subject=msg.subject,
            reason="invalid",
            error=why,
            stream_seq=seq,
        )


def _guess_id(data: bytes) -> str | None:
    """The job id of an invalid submission, when it has a readable one (for the dead letter)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    job_id = value.get("id") if isinstance(value, dict) else None
    return job_id if isinstance(job_id, str) and len(job_id) <= 64 else None
