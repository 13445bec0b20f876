"""An attempt's side of the job's checkpoints (docs/design/checkpoints.md).

The state is an object in ``jobq_artifacts`` (``contract.checkpoint_object_key``), written once
and never replaced; the job's ``CheckpointPointer`` in KV ``jobq_checkpoints`` names the newest one
and the attempt that **owns** it. The attempt number is the fencing token: every pointer change
is a compare-and-set, an attempt takes the pointer when it restores (or first checkpoints), and
an attempt that finds a higher owner there stops (``tasks.Superseded``) without writing.
``restore`` hands out only bytes whose writer and digest are those the pointer names.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.js.errors
import structlog
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from broker import contract, natsutil
from workers import results, tasks

log = structlog.get_logger("workers.checkpoints")

_T = TypeVar("_T")
_TRANSIENT = natsutil.TRANSIENT_OR_RECONNECTING
MAX_TRIES = 20
"""Pointer changes one call tries before giving up: each lost compare-and-set means another
attempt moved the pointer, which happens a handful of times per job at most."""


class CheckpointError(RuntimeError):
    """The job's pointer is unreadable, or it kept changing under this attempt: nothing was
    written and nothing restored (the message says which pointer and why)."""


class Checkpointer:
    """``restore`` and ``checkpoint`` for one attempt of one job, as its pod (``writer``)."""

    def __init__(self, js: JetStreamContext, *, job_id: str, attempt: int, writer: contract.Writer,
                 artifacts: results.ArtifactStore, deadline_s: float = natsutil.RETRY_BUDGET_S,
                 max_bytes: int = contract.MAX_CHECKPOINT_BYTES) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.writer = writer
        self.max_bytes = max_bytes
        self._js = js
        self._artifacts = artifacts
        self._deadline_s = deadline_s
        self._key = contract.checkpoint_pointer_key(job_id)
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self._put_seq = 0
        """The highest seq of an object this attempt put (a failed call's is never reused)."""
        self.superseded_by: int | None = None
        """The newer attempt that owns the pointer, once this one learnt it was superseded."""

    async def restore(self) -> tasks.Restored | None:
        """Take the pointer and return its checkpoint (None: start from scratch)."""
        async with self._lock:
            return await self._restore()

    async def checkpoint(self, state: bytes, *, step: int) -> None:
        """Write ``state`` (reached at ``step``) as the job's newest checkpoint."""
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        if not isinstance(state, bytes | bytearray | memoryview):
            raise TypeError(f"a checkpoint's state must be bytes, not {type(state).__name__}")
        data = bytes(state)
        if len(data) > self.max_bytes:
            raise ValueError(f"a checkpoint holds at most {self.max_bytes} bytes, not {len(data)}")
        async with self._lock:
            await self._checkpoint(data, step)

    async def _restore(self) -> tasks.Restored | None:
        self._refuse_if_superseded()
        for _ in range(MAX_TRIES):
            pointer, revision = await self._read()
            if pointer is None:
                if await self._cas(self._pointer(resumed_at=contract.utcnow()), revision):
                    log.info("checkpoint_none", job_id=self.job_id, attempt=self.attempt)
                    return None
                continue
            self._fence(pointer, step=pointer.step)
            mine = pointer.owner == self.attempt
            state = await self._verified(pointer) if pointer.step is not None else None
            if state is None:
                if mine and pointer.step is None:
                    return None
                # Nothing (usable) to resume from: take the pointer without a checkpoint.
                claim = pointer.model_copy(update=dict(
                    step=None, object="", digest="", size=0, writer=None, made_by=None, at=None,
                )) if mine else self._pointer(resumed_at=contract.utcnow())
                if await self._cas(claim, revision):
                    log.info("checkpoint_none", job_id=self.job_id, attempt=self.attempt)
                    return None
                continue
            assert pointer.step is not None and pointer.made_by is not None
            restored = tasks.Restored(state=state, step=pointer.step, attempt=pointer.made_by)
            if not mine:
                claim = pointer.model_copy(update=dict(
                    owner=self.attempt, seq=0, resumed_step=pointer.step, resumed_from=pointer.made_by,
                    resumed_at=contract.utcnow()))
                if not await self._cas(claim, revision):
                    continue
            log.info("checkpoint_restored", job_id=self.job_id, attempt=self.attempt, step=pointer.step,
                     seq=pointer.seq, from_attempt=pointer.made_by, object=pointer.object, size=len(state))
            return restored
        raise CheckpointError(f"the checkpoint pointer {self._where()} kept changing: gave up restoring")

    async def _checkpoint(self, data: bytes, step: int) -> None:
        self._refuse_if_superseded()
        digest = contract.artifact_digest(data)
        put_before = self._put_seq
        for _ in range(MAX_TRIES):
            pointer, revision = await self._read()
            if pointer is not None:
                self._fence(pointer, step=step)
            mine = pointer is not None and pointer.owner == self.attempt
            seq = max(pointer.seq if pointer is not None and mine else 0, put_before) + 1
            key = contract.checkpoint_object_key(self.job_id, self.attempt, seq)
            await self._artifacts.put(key, data, writer=self.writer, create_only=True)
            self._put_seq = max(self._put_seq, seq)
            now = contract.utcnow()
            kept = pointer if pointer is not None and mine else self._pointer(resumed_at=now)
            new = kept.model_copy(update=dict(
                owner=self.attempt, seq=seq, step=step, object=key, digest=digest, size=len(data),
                writer=self.writer, made_by=self.attempt, at=now))
            if await self._cas(new, revision):
                log.info("checkpoint_saved", job_id=self.job_id, attempt=self.attempt, step=step, seq=seq,
                         size=len(data), object=key)
                return
        raise CheckpointError(f"the checkpoint pointer {self._where()} kept changing: gave up writing")

    def _pointer(self, *, resumed_at: dt.datetime) -> contract.CheckpointPointer:
        """This attempt's pointer with no checkpoint in it: the first take of one starting from scratch."""
        return contract.CheckpointPointer(job_id=self.job_id, owner=self.attempt, resumed_at=resumed_at)

    def _fence(self, pointer: contract.CheckpointPointer, *, step: int | None) -> None:
        """Raise Superseded if a newer attempt owns ``pointer``; from then on refuse everything."""
        if pointer.owner <= self.attempt:
            return
        self.superseded_by = pointer.owner
        log.warning("checkpoint_superseded", job_id=self.job_id, attempt=self.attempt, step=step,
                    seq=self._put_seq, owner=pointer.owner, reason="newer_attempt_owns_pointer")
        self._refuse_if_superseded()

    def _refuse_if_superseded(self) -> None:
        if self.superseded_by is not None:
            raise tasks.Superseded(
                f"attempt {self.superseded_by} of job {self.job_id} owns its checkpoints: attempt "
                f"{self.attempt} was replaced and must stop")

    async def _verified(self, pointer: contract.CheckpointPointer) -> bytes | None:
        """The state ``pointer`` names if its object holds exactly it (the pointer's writer and
        digest, under this job's checkpoint names); else None, with a warning."""
        made_by = pointer.made_by
        prefix = f"{self.job_id}/{made_by}/{contract.CHECKPOINT_SEGMENT}/"
        problem = ""
        data = b""
        if made_by is None or made_by > pointer.owner or not pointer.object.startswith(prefix):
            problem = "not_a_checkpoint_object"
        else:
            try:
                data, stamped = await self._artifacts.get(pointer.object)
            except (tasks.ArtifactNotFound, ValueError):
                problem = "object_missing"
            except (nats.js.errors.BadObjectMetaError, nats.js.errors.DigestMismatchError,
                    nats.js.errors.LinkIsABucketError):
                problem = "object_corrupt"
            else:
                if stamped != pointer.writer:
                    problem = "writer_mismatch"
                elif contract.artifact_digest(data) != pointer.digest:
                    problem = "digest_mismatch"
        if problem:
            log.warning("checkpoint_rejected", job_id=self.job_id, attempt=self.attempt, step=pointer.step,
                        seq=pointer.seq, object=pointer.object, reason=problem)
            return None
        return data

    async def _read(self) -> tuple[contract.CheckpointPointer | None, int]:
        """The pointer and its revision (None, 0 when there is none)."""

        async def read() -> tuple[bytes | None, int]:
            kv = await self._bucket()
            try:
                entry = await kv.get(self._key)
            except nats.js.errors.KeyNotFoundError:  # or deleted (retention): kv.create takes that
                return None, 0
            return entry.value or b"", entry.revision or 0

        value, revision = await self._retry(read, "checkpoint_read")
        if value is None:
            return None, 0
        try:
            pointer = contract.CheckpointPointer.model_validate_json(value)
        except ValidationError as exc:
            raise CheckpointError(
                f"the checkpoint pointer {self._where()} (revision {revision}) is unreadable, left as "
                f"it is: {exc.errors()[0].get('msg', exc)}") from None
        if pointer.job_id != self.job_id:
            raise CheckpointError(f"the checkpoint pointer {self._where()} (revision {revision}) names "
                                  f"job {pointer.job_id!r}, left as it is")
        return pointer, revision

    async def _cas(self, new: contract.CheckpointPointer, revision: int) -> bool:
        """Write ``new`` if the pointer is still at ``revision`` (0: there is none); False when
        another writer got there first. A write whose reply was lost counts as done."""
        payload = new.model_dump_json().encode()

        async def write() -> None:
            kv = await self._bucket()
            if revision:
                await kv.update(self._key, payload, last=revision)
            else:
                await kv.create(self._key, payload)

        try:
            await self._retry(write, "checkpoint_pointer_write")
        except nats.js.errors.KeyWrongLastSequenceError:
            now, _ = await self._read()
            return now is not None and now.model_dump_json().encode() == payload
        return True

    async def _retry(self, call: Callable[[], Awaitable[_T]], what: str) -> _T:
        return await natsutil.retry(call, transient=_TRANSIENT, budget_s=self._deadline_s, what=what)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(contract.BUCKET_CHECKPOINTS)
            except nats.js.errors.BucketNotFoundError:  # a runner started on its own (tests)
                self._kv = await self._js.create_key_value(bucket=contract.BUCKET_CHECKPOINTS, history=1)
        return self._kv

    def _where(self) -> str:
        return f"{contract.BUCKET_CHECKPOINTS}[{self._key}]"
