"""A pulled batch of valid submissions made durable with few JetStream writes, then acked.

Two stages, so that intake can overlap batches (the second stage of one batch runs while the
first stage of the next one does):

1. ``record``: claim the batch's idempotency keys, then create its job records. When the streams
   take atomic batches (nats-server 2.12+, ``Store.atomic``) the keys of a batch go as one atomic
   batch and its records as another: one commit and, on ``sync_interval: always``, a few fsyncs
   for the whole batch instead of one per job (nats-server 2.15.1: about 4 per batch of 64).
   Only first deliveries go that way, and only when there are at least two; if the stream
   refuses the batch (a key or a record exists already), nothing of it was stored and each one
   is written on its own, exactly as a lone submission is.
2. ``announce``: the batch's ``accepted`` and ``duplicate`` events (one atomic batch as well), and
   only then the acks. A submission is acked once its record and its event are stored.

Waves: a submission that shares its job id or its idempotency key with an earlier one of the same
batch waits for the next wave, so the earlier one is decided first and the later one finds its
key or record taken, as if it had come in a later batch.

A crash, or a write that failed, between the records and the acks leaves records without their
events: the submissions are redelivered and find a record that is their own (the same spec and
the same ``submitted_at``, which is the message's JetStream timestamp, the same at every
delivery). Such a submission is accepted again, and its ``accepted`` event published only if none
is stored yet. A record with the same id from another submission makes it a duplicate, as ever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator, Sequence

from nats.aio.msg import Msg

from broker import contract, store, store_expiry
from broker.readmodel import events as event_log


@dataclasses.dataclass(slots=True, eq=False)
class Submission:
    """One valid submission of a batch, and what became of it."""

    msg: Msg
    spec: contract.JobSpec
    submitted: dt.datetime
    """The message's JetStream timestamp: the record's ``submitted_at``, the same at every delivery."""
    event: contract.JobEvent | None = None
    """What to publish for it: ``accepted`` or ``duplicate``; None while undecided."""
    own_record: bool = False
    """Its record was stored already, by an earlier delivery of this very message."""

    @property
    def accepted(self) -> bool:
        return self.event is not None and self.event.type == contract.EventType.ACCEPTED

    @property
    def redelivered(self) -> bool:
        return bool(self.msg.metadata and self.msg.metadata.num_delivered > 1)

    @property
    def digest(self) -> str | None:
        key = self.spec.idempotency_key
        return contract.idempotency_digest(key) if key else None

    def accept(self, *, epoch: int) -> None:
        self.event = contract.JobEvent(
            job_id=self.spec.id,
            type=contract.EventType.ACCEPTED,
            phase=contract.JobPhase.QUEUED,
            message=f"queue {self.spec.queue}",
            epoch=epoch,
        )

    def duplicate(self, why: str) -> None:
        self.event = contract.JobEvent(job_id=self.spec.id, type=contract.EventType.DUPLICATE, message=why)

    def judge(self, found: tuple[contract.JobRecord, int] | None, *, epoch: int) -> None:
        """Decide a submission whose record could not be created: the id is taken by ``found``."""
        if found is not None and found[0].spec == self.spec and found[0].submitted_at == self.submitted:
            self.own_record = True
            self.accept(epoch=epoch)
        elif found is not None and found[0].spec == self.spec:
            self.duplicate("already submitted")
        else:
            self.duplicate("job id reused with a different spec; the first one stands")


def waves(subs: Sequence[Submission]) -> Iterator[list[Submission]]:
    """``subs`` in order, split so that no wave holds two with the same job id or key."""
    rest = list(subs)
    while rest:
        wave: list[Submission] = []
        later: list[Submission] = []
        ids: set[str] = set()
        digests: set[str] = set()
        for sub in rest:
            digest = sub.digest
            if sub.spec.id in ids or (digest is not None and digest in digests):
                later.append(sub)
                continue
            wave.append(sub)
            ids.add(sub.spec.id)
            if digest is not None:
                digests.add(digest)
        yield wave
        rest = later


async def record(st: store.Store, subs: Sequence[Submission], *, fence: Callable[[], int]) -> None:
    """Claim keys and create records for ``subs``, deciding each one's event (stage 1)."""
    for wave in waves(subs):
        await _record_wave(st, wave, fence=fence)


async def _record_wave(st: store.Store, wave: list[Submission], *, fence: Callable[[], int]) -> None:
    # A batch of one gains nothing from an atomic batch; redeliveries may find their writes done.
    atomic = len(wave) >= 2 and st.atomic and not any(sub.redelivered for sub in wave)
    keyed = [sub for sub in wave if sub.spec.idempotency_key]
    if keyed:
        fence()
        claimed = (
            atomic
            and len(keyed) >= 2
            and await st.write_atomically(
                [st.key_write(sub.spec.idempotency_key or "", job_id=sub.spec.id) for sub in keyed]
            )
        )
        if not claimed:
            owners = await asyncio.gather(
                *(
                    st.claim_idempotency_key(sub.spec.idempotency_key or "", job_id=sub.spec.id)
                    for sub in keyed
                )
            )
            for sub, owner in zip(keyed, owners, strict=True):
                if owner != sub.spec.id:  # unless that job was deleted (docs/design/retention.md)
                    owner = await store_expiry.claim_key_of_gone_job(
                        st, sub.spec.idempotency_key or "", owner=owner, job_id=sub.spec.id)
                if owner != sub.spec.id:
                    sub.duplicate(f"idempotency key already used by job {owner}")
    todo = [sub for sub in wave if sub.event is None]
    if not todo:
        return
    epoch = fence()
    now = contract.utcnow()
    records = [
        contract.JobRecord(spec=sub.spec, submitted_at=sub.submitted, updated_at=now, epoch=epoch)
        for sub in todo
    ]
    created: Sequence[int | None]
    if atomic and len(todo) >= 2 and await st.write_atomically([st.record_write(r) for r in records]):
        created = [1] * len(todo)
    else:
        created = await asyncio.gather(*(st.create(r) for r in records))
    taken = []
    for sub, revision in zip(todo, created, strict=True):
        if revision is None:
            taken.append(sub)
        else:
            sub.accept(epoch=epoch)
    found = await asyncio.gather(*(st.get(sub.spec.id) for sub in taken))
    for sub, existing in zip(taken, found, strict=True):
        sub.judge(existing, epoch=epoch)


async def announce(st: store.Store, subs: Sequence[Submission], *, fence: Callable[[], int]) -> None:
    """Publish the events of ``subs`` (stage 2), then ack each; an own record's ``accepted`` event
    is published only if none is stored yet."""
    own = [sub for sub in subs if sub.own_record]
    stored = await asyncio.gather(*(_accepted_stored(st, sub.spec.id) for sub in own))
    skip = {id(sub) for sub, yes in zip(own, stored, strict=True) if yes}
    events = [sub.event for sub in subs if sub.event is not None and id(sub) not in skip]
    if events:
        fence()
        published = (
            len(events) >= 2 and st.atomic and await st.write_atomically([st.event_write(e) for e in events])
        )
        if not published:
            await asyncio.gather(*(st.publish_event(event) for event in events))
    for sub in subs:
        await sub.msg.ack()


async def _accepted_stored(st: store.Store, job_id: str) -> bool:
    stored = await event_log.job_events(st.js, job_id, limit=16)
    return any(event.type == contract.EventType.ACCEPTED for event in stored)
