"""Everything the broker keeps in JetStream: streams, buckets, job records, events, dead letters.

The layout is created idempotently at start (``Store.open``). Job records are written with
compare-and-set on the KV revision, so two dispatchers (or a dispatcher and ``jobq cancel``) can
never overwrite each other's transition; the dispatcher also stamps each record it writes with its
leader epoch (``JobRecord.epoch``, docs/design/dispatcher.md "Leadership and fencing").
Publishes are retried on the brief "no responders" windows of a JetStream leader election.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from broker import contract, natsutil, store_buckets

log = structlog.get_logger("jobq.store")


_NO_MESSAGE_FOUND = 10057
"""JetStream's error code for a stream sequence that holds no message."""
_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_BATCH_ID, _BATCH_SEQUENCE, _BATCH_COMMIT = "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit"


class Conflict(Exception):
    """The record changed since it was read (compare-and-set lost)."""


ATOMIC_BATCH_MAX = 1000
"""nats-server's default ceiling on the messages of one atomic batch (``max_msgs``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """One message of an atomic batch (``Store.write_atomically``)."""

    subject: str
    payload: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class Store:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        *,
        jobs: KeyValue,
        results: KeyValue,
        leader: KeyValue,
        idempotency: KeyValue,
        atomic: bool = False,
    ) -> None:
        self.nc = nc
        self.js = js
        self.jobs = jobs
        self.results = results
        self.leader = leader
        self.idempotency = idempotency
        self.atomic = atomic
        """Events, records and idempotency keys take atomic batches (nats-server 2.12+)."""
        self._dead_store: ObjectStore | None = None

    @classmethod
    async def open(cls, nc: NATS, *, replicas: int = 1, lease_ttl_s: float = 5.0,
                   idempotency_window_s: float = 7 * 86400.0) -> Store:
        js = nc.jetstream(timeout=10)
        storage = api.StorageType.FILE
        version = nc.connected_server_version
        atomic = version.major > 2 or (version.major == 2 and version.minor >= 12)
        await _ensure_stream(
            js,
            api.StreamConfig(
                name=contract.STREAM_SUBMIT,
                subjects=[contract.SUBMIT_WILDCARD],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=storage,
                num_replicas=replicas,
                duplicate_window=contract.DUPLICATE_WINDOW_S,
                max_msg_size=contract.SUBMIT_STREAM_MAX_MSG_BYTES,
            ),
        )
        await _ensure_stream(
            js,
            api.StreamConfig(
                name=contract.STREAM_EVENTS,
                subjects=[contract.EVENTS_WILDCARD],
                storage=storage,
                num_replicas=replicas,
                max_age=7 * 86400,
                duplicate_window=120,
                allow_atomic=atomic or None,  # intake's atomic batches (nats-server 2.12+)
            ),
        )
        await _ensure_stream(
            js,
            api.StreamConfig(
                name=contract.STREAM_DEAD,
                subjects=[contract.DEAD_WILDCARD],
                storage=storage,
                num_replicas=replicas,
                max_age=30 * 86400,
                duplicate_window=120,
            ),
        )
        # Before the consumer gets max_deliver: its advisories have somewhere to go from the start.
        await _ensure_stream(
            js,
            api.StreamConfig(
                name=contract.STREAM_ADVISORIES,
                subjects=[contract.max_deliveries_subject()],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=storage,
                num_replicas=replicas,
                max_age=30 * 86400,
            ),
        )
        # add_consumer creates or updates: a durable made by an older jobq gets max_deliver too.
        await js.add_consumer(
            contract.STREAM_SUBMIT,
            api.ConsumerConfig(
                durable_name=contract.CONSUMER_DISPATCHER,
                name=contract.CONSUMER_DISPATCHER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=contract.SUBMIT_MAX_DELIVER,
                max_ack_pending=1000,
                filter_subject=contract.SUBMIT_WILDCARD,
                num_replicas=replicas,
            ),
        )
        await js.add_consumer(
            contract.STREAM_ADVISORIES,
            api.ConsumerConfig(
                durable_name=contract.CONSUMER_DISPATCHER,
                name=contract.CONSUMER_DISPATCHER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=100,
                num_replicas=replicas,
            ),
        )
        jobs = await store_buckets.ensure_kv(
            js, api.KeyValueConfig(bucket=contract.BUCKET_JOBS, history=1, replicas=replicas, storage=storage)
        )
        results = await store_buckets.ensure_kv(
            js,
            api.KeyValueConfig(bucket=contract.BUCKET_RESULTS, history=1, replicas=replicas, storage=storage),
        )
        idempotency = await store_buckets.ensure_kv(
            js,
            api.KeyValueConfig(
                bucket=contract.BUCKET_IDEMPOTENCY, history=1, replicas=replicas, storage=storage,
                ttl=idempotency_window_s,  # docs/design/retention.md; an older bucket is updated at start
            ),
        )
        leader = await store_buckets.ensure_kv(
            js,
            api.KeyValueConfig(
                bucket=contract.BUCKET_LEADER, history=1, ttl=lease_ttl_s, replicas=replicas, storage=storage
            ),
        )
        await store_buckets.ensure_output_buckets(js, replicas=replicas, storage=storage)
        for stream in (
            contract.STREAM_EVENTS,
            *(f"KV_{b}" for b in (contract.BUCKET_JOBS, contract.BUCKET_IDEMPOTENCY)),
        ):
            atomic = atomic and await allow_stream_option(nc, stream, "allow_atomic")
        return cls(nc, js, jobs=jobs, results=results, leader=leader, idempotency=idempotency, atomic=atomic)

    # --- job records ---------------------------------------------------------------------

    async def get(self, job_id: str) -> tuple[contract.JobRecord, int] | None:
        try:
            entry = await self.jobs.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        assert entry.value is not None and entry.revision is not None
        return contract.JobRecord.model_validate_json(entry.value), entry.revision

    async def create(self, record: contract.JobRecord) -> int | None:
        """Store a new record; None when one with this id exists already."""
        try:
            return await self.jobs.create(record.spec.id, record.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def update(self, record: contract.JobRecord, *, revision: int) -> int:
        try:
            return await self.jobs.update(record.spec.id, record.model_dump_json().encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(record.spec.id) from exc

    async def claim_idempotency_key(self, key: str, *, job_id: str) -> str:
        """Bind ``key`` to ``job_id`` unless it is bound already; return the job id it binds."""
        digest = contract.idempotency_digest(key)
        try:
            await self.idempotency.create(digest, job_id.encode())
            return job_id
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self.idempotency.get(digest)
            return (entry.value or b"").decode() or job_id

    # --- intake's atomic batches -----------------------------------------------------------

    def record_write(self, record: contract.JobRecord) -> Write:
        """``create`` of ``record`` as a message of an atomic batch."""
        return Write(
            f"$KV.{contract.BUCKET_JOBS}.{record.spec.id}",
            record.model_dump_json().encode(),
            {_EXPECTED_LAST_SUBJECT_SEQ: "0"},
        )

    def key_write(self, key: str, *, job_id: str) -> Write:
        """``claim_idempotency_key`` of an unbound key as a message of an atomic batch."""
        digest = contract.idempotency_digest(key)
        return Write(
            f"$KV.{contract.BUCKET_IDEMPOTENCY}.{digest}", job_id.encode(), {_EXPECTED_LAST_SUBJECT_SEQ: "0"}
        )

    def event_write(self, event: contract.JobEvent) -> Write:
        """``publish_event`` as a message of an atomic batch."""
        return Write(contract.event_subject(event.job_id), event.model_dump_json().encode())

    async def write_atomically(self, writes: Sequence[Write], *, timeout_s: float = 10.0) -> bool:
        """Store ``writes`` (all on one stream, at most ATOMIC_BATCH_MAX) as one atomic batch: all
        of them or none, and on ``sync_interval: always`` with a few fsyncs instead of one each.
        False when the stream refused the batch (a create found its key taken, atomic batches are
        off): then none of it was stored. A NATS error is raised: whether it was stored is unknown."""
        if not self.atomic or not writes or len(writes) > ATOMIC_BATCH_MAX:
            return False
        batch_id = uuid.uuid4().hex
        *staged, last = writes
        for n, write in enumerate(staged, 1):
            headers = {**write.headers, _BATCH_ID: batch_id, _BATCH_SEQUENCE: str(n)}
            await self.nc.publish(write.subject, write.payload, headers=headers)
        headers = {**last.headers, _BATCH_ID: batch_id, _BATCH_SEQUENCE: str(len(writes)), _BATCH_COMMIT: "1"}
        reply = await self.nc.request(last.subject, last.payload, headers=headers, timeout=timeout_s)
        answer = json.loads(reply.data or b"{}")
        if "error" in answer or "seq" not in answer:
            log.info(
                "atomic_batch_refused", subject=last.subject, size=len(writes), error=answer.get("error")
            )
            return False
        return True

    async def watch_jobs(
        self, on_record: Callable[[contract.JobRecord, int], None], ready: asyncio.Event,
        on_removed: Callable[[str], None] | None = None,
    ) -> None:
        """Call ``on_record`` for every record now and for every later change, and ``on_removed``
        for every record deleted or purged (forever)."""
        watcher = await self.jobs.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    ready.set()
                    continue
                if entry.value and entry.revision is not None:
                    on_record(contract.JobRecord.model_validate_json(entry.value), entry.revision)
                elif entry.operation in ("DEL", "PURGE") and on_removed is not None:
                    on_removed(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    # --- results --------------------------------------------------------------------------

    async def get_result(self, job_id: str, attempt: int) -> contract.TaskResult | None:
        try:
            entry = await self.results.get(contract.result_key(job_id, attempt))
        except nats.js.errors.KeyNotFoundError:
            return None
        return contract.TaskResult.model_validate_json(entry.value or b"{}")

    # --- events and dead letters ----------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> api.PubAck:
        hdrs = dict(headers or {})
        if msg_id is not None:
            hdrs[contract.HEADER_MSG_ID] = msg_id
        return await natsutil.retry(lambda: self.js.publish(subject, payload, headers=hdrs or None))

    async def publish_event(self, event: contract.JobEvent) -> None:
        await self.publish(contract.event_subject(event.job_id), event.model_dump_json().encode())

    async def publish_dead_letter(self, letter: contract.DeadLetter, *, msg_id: str) -> None:
        """Keep the letter's whole original (if it was built with one) in object store
        ``jobq_dead`` under ``letter.original``, then publish the letter (bounded in size)."""
        if letter.original is not None and letter.original_bytes is not None:
            await self.keep_dead_original(letter.original, letter.original_bytes)
        await self.publish(contract.dead_subject(letter.reason.value), letter.encode(), msg_id=msg_id)

    async def keep_dead_original(self, key: str, data: bytes) -> None:
        originals = await self._dead_originals()
        await natsutil.retry(lambda: originals.put(key, data))

    async def dead_original(self, key: str) -> bytes | None:
        """The whole original a dead letter names, or None when it is gone (expired, deleted)."""
        originals = await self._dead_originals()
        try:
            result = await originals.get(key)
        except nats.js.errors.NotFoundError:
            return None
        return bytes(result.data or b"")

    async def _dead_originals(self) -> ObjectStore:
        if self._dead_store is None:
            self._dead_store = await self.js.object_store(contract.OBJECT_STORE_DEAD)
        return self._dead_store

    async def submission_at(self, seq: int) -> api.RawStreamMsg | None:
        """The submission stored under stream sequence ``seq``, or None once it is gone."""
        try:
            return await natsutil.retry(lambda: self.js.get_msg(contract.STREAM_SUBMIT, seq))
        except nats.js.errors.NotFoundError:
            return None

    async def delete_submission(self, seq: int) -> None:
        try:
            await natsutil.retry(lambda: self.js.delete_msg(contract.STREAM_SUBMIT, seq))
        except nats.js.errors.APIError as exc:
            if exc.err_code != _NO_MESSAGE_FOUND:  # deleted already: that is what we wanted
                raise

    async def queue_depth(self) -> int:
        info = await self.js.consumer_info(contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


async def allow_stream_option(nc: NATS, stream: str, option: str) -> bool:
    """Turn on the boolean stream setting ``option`` (e.g. ``allow_atomic``, nats-server 2.12+;
    ``allow_msg_ttl``, 2.11+) unless it is on; False when the server cannot."""
    try:
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=10)).data)
        config = info["config"]
        if config.get(option) is not True:
            config[option] = True
            update = f"$JS.API.STREAM.UPDATE.{stream}"
            config = json.loads((await nc.request(update, json.dumps(config).encode(), timeout=10)).data)[
                "config"
            ]
    except (nats.errors.Error, KeyError, ValueError) as exc:
        log.warning("stream_option_unavailable", stream=stream, option=option, error=repr(exc))
        return False
    return config.get(option) is True


def parse_headers(msg: Msg) -> dict[str, Any]:
    return dict(msg.headers or {})
