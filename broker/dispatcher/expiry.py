"""The leader's sweeper: delete finished jobs whose retention ran out (docs/design/retention.md).

One job's deletion, each step fenced by the lease and each safe to repeat:

1. mark the record ``expired_at`` (compare-and-set, with our epoch): from here on every reader
   treats the job as gone, and a re-drive or a cancel finds nothing to change;
2. purge the artifacts its attempts' results name, its checkpoint objects, then its checkpoint
   pointer and the results (``<job>.<attempt>``);
3. purge the record (compare-and-set on the marked revision).

A crash or a lost lease anywhere leaves a marked record (due at once, whoever leads next finishes
it) or an unmarked one (due as before): level-triggered, like reconcile. The sweeper sleeps until
the earliest expiry time the ``ExpiryHeap`` holds, or until an earlier one arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable

import structlog

from broker import checkpoint_gc, checkpoint_store, contract, store, store_expiry
from broker.dispatcher.index import JobIndex
from broker.dispatcher.lease import LeaseLost
from broker.dispatcher.retention import ExpiryHeap, RetentionPolicy

log = structlog.get_logger("jobq.dispatcher.expiry")

BATCH = 64
"""Jobs taken off the heap per round and deleted side by side; the heap is looked at again after
each round."""
RETRY_AFTER_S = 5.0
"""A deletion that failed (NATS trouble, a record that kept changing) is tried again after this."""
LONGEST_SLEEP_S = 300.0
"""The sweeper looks at the heap at least this often (a wall clock that jumped is noticed)."""


class Sweeper:
    def __init__(
        self,
        st: store.Store,
        *,
        index: JobIndex,
        policy: RetentionPolicy,
        fence: Callable[[int], int],
        idempotency_window_s: float,
        clock: Callable[[], dt.datetime] = contract.utcnow,
        on_expired: Callable[[contract.JobRecord], None] | None = None,
    ) -> None:
        self._store = st
        self._fence = fence
        self._clock = clock
        self._window_s = idempotency_window_s
        self._on_expired = on_expired or (lambda _record: None)
        self._wake = asyncio.Event()
        self._marker_ttl: bool | None = None
        self.heap = ExpiryHeap(policy, on_earlier=self._wake.set)
        self.expired = 0
        """Jobs this dispatcher deleted (since it started)."""
        for record in index.records():  # what the index holds already, then every change
            self.heap.changed(None, record)
        index.subscribe(self.heap.changed)
        index.subscribe_removed(self.heap.removed)

    async def run(self, stop: asyncio.Event) -> None:
        """Delete due jobs until ``stop``, or until we may no longer act (the lease keeper then
        ends the leadership)."""
        try:
            await self._sweep(stop)
        except* LeaseLost as group:
            log.info("expiry_fenced", reason=str(group.exceptions[0]))

    async def _sweep(self, stop: asyncio.Event) -> None:
        self._fence(0)
        await store_expiry.keep_keys_for(self._store.js, self._window_s)
        if self._marker_ttl is None:
            self._marker_ttl = await store_expiry.allow_marker_ttl(self._store.nc)
        while not stop.is_set():
            due = self.heap.take_due(self._clock(), most=BATCH)
            if due:  # each job's steps in order, the jobs of a round side by side
                async with asyncio.TaskGroup() as tg:
                    for job_id in due:
                        tg.create_task(self._expire_or_retry(job_id))
            earliest = self.heap.earliest()
            if earliest is not None and earliest <= self._clock():
                continue
            wait = LONGEST_SLEEP_S if earliest is None else (earliest - self._clock()).total_seconds()
            self._wake.clear()
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
            try:
                await asyncio.wait(
                    waiters, timeout=min(max(wait, 0.0), LONGEST_SLEEP_S), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*waiters, return_exceptions=True)

    async def _expire_or_retry(self, job_id: str) -> None:
        """``expire``; a job whose deletion failed is tried again after RETRY_AFTER_S."""
        try:
            await self.expire(job_id)
        except LeaseLost:
            raise
        except Exception as exc:  # store.Conflict (the record changed) or NATS trouble
            log.warning("job_expiry_failed", job_id=job_id, error=repr(exc), retry_in_s=RETRY_AFTER_S)
            self.heap.set(job_id, self._clock() + dt.timedelta(seconds=RETRY_AFTER_S))

    async def expire(self, job_id: str) -> bool:
        """Delete ``job_id`` if it is due; True when it was deleted now. Raises store.Conflict
        when its record changed under us, LeaseLost when we may no longer act."""
        got = await self._store.get(job_id)
        if got is None:
            return False
        record, revision = got
        now = self._clock()
        due = self.heap.policy.due_at(record)
        if due is None or due > now:  # re-driven, or its retention is longer than we thought
            self.heap.set(job_id, due)
            return False
        epoch = self._fence(record.epoch)
        if record.expired_at is None:
            record = record.model_copy(update={"expired_at": now, "epoch": epoch})
            self._fence(0)
            revision = await self._store.update(record, revision=revision)
        for name in await self._artifact_keys(record):
            self._fence(0)
            await store_expiry.purge_artifact(self._store, name)
        self._fence(0)
        pointer = await checkpoint_store.read_pointer(self._store, job_id)
        await checkpoint_store.purge_objects(self._store, checkpoint_gc.every_object(record, pointer))
        self._fence(0)
        await checkpoint_store.purge_pointer(self._store, job_id)
        self._fence(0)
        await store_expiry.purge_results(self._store, job_id)
        self._fence(0)
        await store_expiry.purge_record(
            self._store, job_id, revision=revision, marker_ttl=bool(self._marker_ttl)
        )
        self.expired += 1
        self._on_expired(record)
        log.info(
            "job_expired",
            job_id=job_id,
            phase=record.phase,
            queue=record.spec.queue,
            finished_at=record.finished_at.isoformat() if record.finished_at else None,
            retention_s=self.heap.policy.retention_s(record.spec),
            late_s=round((now - due).total_seconds(), 3),
        )
        return True

    async def _artifact_keys(self, record: contract.JobRecord) -> list[str]:
        """The artifacts the attempts' stored results name (every artifact a reader can ever be
        handed: readers hand out only those a result lists, docs/design/retention.md)."""
        keys: list[str] = []
        for attempt in record.attempts:
            try:
                result = await self._store.get_result(record.spec.id, attempt.number)
            except ValueError:  # an unreadable result names nothing
                result = None
            if result is not None:
                keys += [contract.artifact_key(record.spec.id, attempt.number, n) for n in result.artifacts]
        return keys
