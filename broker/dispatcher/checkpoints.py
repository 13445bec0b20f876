"""The leader's side of checkpoints (docs/design/checkpoints-dispatcher.md): stamping ended attempts, counting
checkpoints and deleting the objects no pointer will reference again.

* ``stamp``: a pass that ends an attempt reads the job's pointer once (one KV get per ended
  attempt, nothing for a pass that ends none) and stamps the ended attempt before the record is
  written (``checkpoint_stamp``); the objects that became garbage are deleted once the record is.
* ``watch`` (leader only): every pointer change seen live counts the new checkpoints
  (``jobq_checkpoints_total``) and deletes the objects it superseded. What it delivers first (the
  pointers as they are when leadership starts) is neither counted nor collected: the attempt-end
  collection of each attempt and retention catch whatever a failover made it miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Protocol

import pydantic
import structlog

from broker import checkpoint_gc, checkpoint_store, contract, natsutil, store
from broker.backends import base
from broker.dispatcher import checkpoint_stamp
from broker.dispatcher.action import Action
from broker.dispatcher.index import JobIndex

if TYPE_CHECKING:
    from broker.dispatcher.reconcile import Heartbeats

log = structlog.get_logger("jobq.dispatcher.checkpoints")


class Counter(Protocol):
    def checkpointed(self, record: contract.JobRecord, count: int) -> None: ...


def new_checkpoints(before: contract.CheckpointPointer | None, after: contract.CheckpointPointer) -> int:
    """Checkpoints written between two values of a pointer (``before`` None: it is new)."""
    if before is None or after.owner > before.owner:
        return after.seq
    if after.owner == before.owner:
        return max(0, after.seq - before.seq)
    return 0


class Checkpoints:
    def __init__(self, *, st: store.Store, backend: base.ClusterBackend, heartbeats: Heartbeats,
                 index: JobIndex, counter: Counter | None = None) -> None:
        self._store = st
        self._backend = backend
        self._heartbeats = heartbeats
        self._index = index
        self._counter = counter
        self._seen: dict[str, contract.CheckpointPointer] = {}
        """Job -> its pointer as the watch last delivered it (while we lead)."""
        self.live = asyncio.Event()
        """Set once the watch has delivered the pointers as they were when it started."""
        index.subscribe_removed(self._forget)

    def _forget(self, job_id: str) -> None:
        self._seen.pop(job_id, None)

    async def stamp(self, before: contract.JobRecord, action: Action) -> Action:
        """``action`` with the attempts it ends stamped, and the objects their end made garbage."""
        after = action.record
        ended = checkpoint_stamp.newly_ended(before, after) if after is not None else ()
        if after is None or not ended:
            return action
        job_id = after.spec.id
        pointer = await checkpoint_store.read_pointer(self._store, job_id)
        # The pod's own time of its last beat: the same clock as its checkpoints' ``at``.
        pod_beats = {n: beat.at if (beat := self._heartbeats.seen.get((job_id, n))) else None for n in ended}
        node_beats: dict[str, dt.datetime | None] = {}
        if any(a.number in ended and a.reason is not None and a.reason.is_disruption
               and pod_beats.get(a.number) is None and a.node for a in after.attempts):
            node_beats = {n.name: n.last_heartbeat for n in await self._backend.list_nodes()}
        stamped = checkpoint_stamp.stamp(after, ended, pointer, pod_beats=pod_beats,
                                         node_beats=node_beats)
        garbage = checkpoint_gc.at_attempt_end(stamped, ended, pointer)
        for attempt in stamped.attempts:
            done = attempt.checkpoints
            if attempt.number in ended and (done or attempt.work_lost_s is not None):
                log.info("attempt_checkpoints", job_id=job_id, attempt=attempt.number, node=attempt.node,
                         reason=attempt.reason, written=done.written if done else 0,
                         step=done.step if done else None, work_lost_s=attempt.work_lost_s)
        return dataclasses.replace(action, record=stamped, drop_checkpoints=tuple(garbage))

    async def collect(self, job_id: str, names: tuple[str, ...]) -> None:
        """Delete garbage objects (after the record that made them so was written); a failure is
        logged, not raised: what is left is collected at the next attempt end or at retention."""
        try:
            await checkpoint_store.delete_objects(self._store, job_id, list(names))
        except Exception as exc:
            log.warning("checkpoint_gc_failed", job_id=job_id, objects=len(names), error=repr(exc))

    async def watch(self, stop: asyncio.Event) -> None:
        """Follow every pointer change until ``stop`` (leader only)."""
        js = self._store.js  # a broker failover times these out until a leader is elected
        kv = await natsutil.retry(lambda: js.key_value(contract.BUCKET_CHECKPOINTS),
                                  transient=natsutil.TRANSIENT_OR_RECONNECTING, what="checkpoints_watch")
        watcher = await natsutil.retry(kv.watchall, transient=natsutil.TRANSIENT_OR_RECONNECTING,
                                       what="checkpoints_watch")
        self._seen.clear()
        live = False
        try:
            async for entry in watcher:
                if stop.is_set():
                    return
                if entry is None:
                    live = True
                    self.live.set()
                    continue
                job_id = entry.key
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._seen.pop(job_id, None)
                    continue
                try:
                    pointer = contract.CheckpointPointer.model_validate_json(entry.value)
                except pydantic.ValidationError:
                    log.warning("checkpoint_pointer_unreadable", job_id=job_id)
                    continue
                if pointer.job_id != job_id:
                    continue
                before = self._seen.get(job_id)
                self._seen[job_id] = pointer
                if live:
                    await self._changed(job_id, before, pointer)
        finally:
            self.live.clear()
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _changed(self, job_id: str, before: contract.CheckpointPointer | None,
                       after: contract.CheckpointPointer) -> None:
        written = new_checkpoints(before, after)
        record = self._index.get(job_id)
        if written and record is not None and self._counter is not None:
            self._counter.checkpointed(record, written)
        garbage = checkpoint_gc.superseded(job_id, before, after)
        if garbage:
            await self.collect(job_id, tuple(garbage))
