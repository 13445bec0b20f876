"""Intake throughput: submissions per second that become durable job records, jobq against a bare
nats-py loop making the same JetStream writes per job on the same nats-server (issue 14).

Per fsync mode (``sync_interval: always``, jobq's default, and nats-server's default, as
``JOBQ_NATS_SYNC=default`` gives) one embedded stack is started: a dispatcher and one node that a
``sleep`` job fills (bench/full_node.py), so no submitted job can start and nothing but intake
writes per job. On its nats-server, in this order:

- ``bare seq``: N job specs (the SDK's bytes and headers) are published to a work-queue stream
  like ``JOBQ_SUBMIT``, then a loop drains it through a durable pull consumer like the
  dispatcher's (fetch ``BATCH``), one message at a time: KV create of the record (in a bucket
  like ``jobq_jobs``), publish of an ``accepted`` event (stream like ``JOBQ_EVENTS``), ack. With
  ``--idempotency-keys``, first a KV create of the key as well. The writes jobq makes, one job at
  a time (what jobq did before it took batches).
- ``bare pipe``: the same writes per job, grouped as jobq's intake groups them
  (``broker/dispatcher/intake_batch.py``): per fetched batch one atomic batch of key creates (with
  ``--idempotency-keys``), one of record creates (``Nats-Expected-Last-Subject-Sequence: 0``), one
  of events, then the acks; a batch's events and acks overlap the next batch's creates. Still
  "ack only after the record is stored". The ceiling, the peer of the ratio.
- ``jobq``: the dispatcher is stopped (SIGTERM), N jobs are submitted through the SDK onto
  ``jobq.submit.bench-intake``, the dispatcher is started again and drains them; a KV watch on
  ``jobq_jobs`` sees each record appear.

Rate: the drain rate of a full submit stream, without process start-up or the publishes. For the
bare loops N / (last record stored - first fetch answered); for jobq, whose fetches are not seen
from outside, (N - 1) / (last record seen - first record seen). Ratios compare figures of the
same run and server.

    .venv/bin/python -m bench.intake                       # ~2-3 min
    .venv/bin/python -m bench.intake --jobs 3000 --rounds 3 --modes always
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from bench.full_node import WAITING, RecordWatch, start_full, submit_all
from broker import contract, natsutil
from broker.dispatcher.intake import BATCH
from broker.embedded.stack import Stack
from submitter import specs
from submitter.client import JobqClient

MODES = {"always": True, "default": False}
QUEUE = "bench-intake"
KINDS = ("bare seq", "bare pipe", "jobq")


def job_fields(prefix: str, n: int, *, idempotency_keys: bool) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i:05d}",
            "queue": QUEUE,
            **WAITING,
            **({"idempotency_key": f"{prefix}-key-{i}"} if idempotency_keys else {}),
        }
        for i in range(n)
    ]


class BareIntake:
    """jobq's per-job JetStream writes without jobq, on streams and buckets of its own."""

    def __init__(self, nc: NATS, js: JetStreamContext, name: str) -> None:
        self.nc = nc
        self.js = js
        self.name = name
        self.stream = f"BENCH_{name.upper()}_SUBMIT"
        self.subject = f"bench.{name}.submit"
        self.events = f"bench.{name}.events"
        self.jobs: KeyValue | None = None
        self.keys: KeyValue | None = None
        self.done: list[float] = []
        self.announcing: asyncio.Task[None] | None = None
        """The previous batch's events and acks, while this batch's creates are written."""

    async def prepare(self, payloads: list[tuple[bytes, dict[str, str]]]) -> None:
        """Streams, buckets and consumer configured as ``broker.store`` does; submissions in."""
        await self.js.add_stream(
            name=self.stream,
            subjects=[self.subject],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            duplicate_window=contract.DUPLICATE_WINDOW_S,
        )
        await self.js.add_stream(
            name=f"BENCH_{self.name.upper()}_EVENTS",
            subjects=[f"{self.events}.>"],
            storage=api.StorageType.FILE,
            duplicate_window=120,
            allow_atomic=True,
        )
        await self.js.add_consumer(
            self.stream,
            api.ConsumerConfig(
                durable_name="bench",
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=contract.SUBMIT_MAX_DELIVER,
                max_ack_pending=1000,
            ),
        )
        self.jobs = await self.js.create_key_value(
            api.KeyValueConfig(bucket=f"bench_{self.name}_jobs", history=1, storage=api.StorageType.FILE)
        )
        self.keys = await self.js.create_key_value(
            api.KeyValueConfig(bucket=f"bench_{self.name}_keys", history=1, storage=api.StorageType.FILE)
        )
        for bucket in (f"bench_{self.name}_jobs", f"bench_{self.name}_keys"):
            config = (await self.js.stream_info(f"KV_{bucket}")).config
            config.allow_atomic = True
            await self.js.update_stream(config)
        futures = [
            await self.js.publish_async(self.subject, data, headers=headers) for data, headers in payloads
        ]
        await asyncio.wait_for(asyncio.gather(*futures), 120)

    def _writes(self, msg: Msg) -> tuple[tuple[str, bytes] | None, tuple[str, bytes], tuple[str, bytes]]:
        """The key create (if the job has a key), record create and event of one submission, as
        (subject, payload) pairs: what jobq writes for it."""
        spec = json.loads(msg.data)
        job_id = spec["id"]
        key = None
        if "idempotency_key" in spec:
            key = (
                f"$KV.bench_{self.name}_keys.{contract.idempotency_digest(spec['idempotency_key'])}",
                job_id.encode(),
            )
        now = contract.utcnow().isoformat()
        submitted = msg.metadata.timestamp.isoformat() if msg.metadata.timestamp else now
        record = {"spec": spec, "phase": "queued", "submitted_at": submitted, "updated_at": now, "epoch": 1}
        event = {
            "job_id": job_id,
            "type": "accepted",
            "phase": "queued",
            "message": f"queue {QUEUE}",
            "epoch": 1,
            "at": now,
        }
        return (
            key,
            (f"$KV.bench_{self.name}_jobs.{job_id}", json.dumps(record).encode()),
            (f"{self.events}.{job_id}", json.dumps(event).encode()),
        )

    async def _one(self, msg: Msg) -> None:
        key, record, event = self._writes(msg)
        if key is not None:
            await self.js.publish(*key, headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        await self.js.publish(*record, headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        self.done.append(time.perf_counter())
        await self.js.publish(*event)
        await msg.ack()

    async def _atomic(self, writes: list[tuple[str, bytes]], *, create: bool) -> None:
        """One atomic batch (ADR-50): every message but the last sent as is, the last commits."""
        batch_id = uuid.uuid4().hex
        nc = self.nc
        for n, (subject, payload) in enumerate(writes, 1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
            if create:
                headers["Nats-Expected-Last-Subject-Sequence"] = "0"
            if n < len(writes):
                await nc.publish(subject, payload, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            answer = json.loads((await nc.request(subject, payload, headers=headers, timeout=10)).data)
            if "error" in answer:
                raise RuntimeError(f"atomic batch refused: {answer['error']}")

    async def _announce(self, batch: list[Msg], events: list[tuple[str, bytes]]) -> None:
        await self._atomic(events, create=False)
        for msg in batch:
            await msg.ack()

    async def drain(self, jobs: int, *, pipelined: bool) -> float:
        sub = await self.js.pull_subscribe_bind(durable="bench", stream=self.stream)
        started: float | None = None
        while len(self.done) < jobs:
            batch = await sub.fetch(BATCH, timeout=5)
            started = started or time.perf_counter()
            if not pipelined:
                for msg in batch:
                    await self._one(msg)
                continue
            writes = [self._writes(msg) for msg in batch]
            keys = [key for key, _, _ in writes if key is not None]
            if keys:
                await self._atomic(keys, create=True)
            await self._atomic([record for _, record, _ in writes], create=True)
            self.done.extend([time.perf_counter()] * len(batch))
            if self.announcing is not None:
                await self.announcing
            events = [event for _, _, event in writes]
            self.announcing = asyncio.get_running_loop().create_task(self._announce(batch, events))
        if self.announcing is not None:
            await self.announcing
        await sub.unsubscribe()
        assert started is not None
        return len(self.done) / (self.done[-1] - started)


async def bare_rate(stack: Stack, jobs: int, *, pipelined: bool, idempotency_keys: bool) -> float:
    name = "pipe" if pipelined else "seq"
    nc = await natsutil.connect(stack.nats_url, name=f"bench-intake-{name}",
                                nats_options=stack.nats_options())
    try:
        js = nc.jetstream(timeout=10, publish_async_max_pending=256)
        bare = BareIntake(nc, js, name)
        client = JobqClient(stack.nats_url, nats_options=stack.nats_options())
        payloads = []
        for fields in job_fields(f"bare-{name}", jobs, idempotency_keys=idempotency_keys):
            spec = client.build_spec(**fields)
            headers = {
                contract.HEADER_MSG_ID: spec.dedupe_key,
                contract.HEADER_CONTRACT: str(contract.CONTRACT_VERSION),
            }
            payloads.append((specs.payload(spec), headers))
        await bare.prepare(payloads)
        return await bare.drain(jobs, pipelined=pipelined)
    finally:
        await nc.drain()


async def jobq_rate(stack: Stack, jobs: int, *, idempotency_keys: bool) -> float:
    stack.signal_dispatcher(0, signal.SIGTERM)
    await asyncio.wait_for(stack.dispatchers[0].wait(), 30)
    fields = job_fields("jobq", jobs, idempotency_keys=idempotency_keys)
    async with JobqClient(stack.nats_url, nats_options=stack.nats_options(), name="bench-intake") as client:
        await submit_all(client, fields)
        watch = RecordWatch(client, (str(f["id"]) for f in fields))
        await watch.start()
        try:
            await stack.start_dispatcher(0)
            if not await watch.wait(600):
                raise RuntimeError(f"only {len(watch.seen)} of {jobs} records after 600 s")
            return watch.rate()
        finally:
            await watch.stop()


async def one_round(mode: str, *, jobs: int, idempotency_keys: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="jobq-bench-intake-") as work:
        stack = await start_full(Path(work), sync_always=MODES[mode])
        try:
            for server in stack.nats_cluster:
                config = (await server.varz())["jetstream"]["config"]
                assert config.get("sync_always", False) is MODES[mode]
            keys = idempotency_keys
            measures: dict[str, Callable[[], Awaitable[float]]] = {
                "bare seq": lambda: bare_rate(stack, jobs, pipelined=False, idempotency_keys=keys),
                "bare pipe": lambda: bare_rate(stack, jobs, pipelined=True, idempotency_keys=keys),
                "jobq": lambda: jobq_rate(stack, jobs, idempotency_keys=keys),
            }
            rates = {}
            for kind in KINDS:
                rates[kind] = await measures[kind]()
                print(f"  sync {mode:<7} {kind:<9} {rates[kind]:9,.0f} jobs/s", flush=True)
            return rates
        finally:
            await stack.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per measurement")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per mode (median is reported)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="every job carries an idempotency key (one more KV create per job)",
    )
    args = parser.parse_args()
    print(
        f"intake: {args.jobs} jobs per measurement, {args.rounds} round(s) per fsync mode, "
        f"idempotency keys {'on' if args.idempotency_keys else 'off'}",
        flush=True,
    )
    medians: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in KINDS} for m in args.modes}
    for _ in range(args.rounds):
        for mode in args.modes:
            for kind, rate in (
                await one_round(mode, jobs=args.jobs, idempotency_keys=args.idempotency_keys)
            ).items():
                samples[mode][kind].append(rate)
    print()
    for mode in args.modes:
        medians[mode] = {kind: statistics.median(values) for kind, values in samples[mode].items()}
        m = medians[mode]
        print(
            f"intake sync {mode:<7} jobq {m['jobq']:8,.0f} jobs/s   bare seq {m['bare seq']:8,.0f}   "
            f"bare pipe {m['bare pipe']:8,.0f}   jobq/bare pipe {m['jobq'] / m['bare pipe']:.3f}   "
            f"jobq/bare seq {m['jobq'] / m['bare seq']:.3f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
