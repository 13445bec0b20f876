"""What fsyncing every JetStream write costs: the same workloads on ``sync_interval: always``
(jobq's default, issue 12) and on nats-server's default (fsync every 2 minutes), in one run.

- ``publish``: nats-py concurrent JetStream publishes (``publish_async``, 256 in flight, 256-byte
  payloads) into a file-stored stream on a bare nats-server: publish acks per second.
- ``intake``: jobq's own intake on the embedded stack (a dispatcher, one node agent, the queue's
  running limit 0, so no job ever gets capacity). N jobs are submitted through the SDK (64 at
  once) and the clock stops when every one of them has a record in the ``jobq_jobs`` bucket
  (seen by a KV watch): durable records per second. Each job is several JetStream writes (the
  submission, its record, its events, the submission's ack).

Modes alternate round by round (always, default, always, ...) so that a noisy neighbour on a
shared machine hits both; each figure is the median of its rounds, and the ratio compares the
two modes of this run only.

    .venv/bin/python -m bench.fsync                       # ~1-2 min
    .venv/bin/python -m bench.fsync --rounds 3 --jobs 500 --nats-servers 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js import api

from broker import natsutil
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack, StackConfig
from submitter.client import JobqClient

MODES = {"always": True, "default": False}
QUEUE = "fsync-bench"
PUBLISH_IN_FLIGHT = 256
SUBMIT_IN_FLIGHT = 64


async def publish_rate(work: Path, *, sync_always: bool, messages: int) -> float:
    """Publish acks per second on a bare nats-server."""
    server = NatsServer(store_dir=work / "nats", port=-1, monitor_port=-1, sync_always=sync_always)
    await server.start()
    try:
        assert (await server.varz())["jetstream"]["config"].get("sync_always", False) is sync_always
        nc = await natsutil.connect(server.url, name="bench-fsync")
        try:
            js = nc.jetstream(publish_async_max_pending=PUBLISH_IN_FLIGHT)
            await js.add_stream(name="BENCH", subjects=["bench.>"], storage=api.StorageType.FILE)
            payload = b"x" * 256
            started = time.perf_counter()
            futures = [await js.publish_async(f"bench.{i % 16}", payload) for i in range(messages)]
            await asyncio.wait_for(asyncio.gather(*futures), 120)
            elapsed = time.perf_counter() - started
            assert (await js.stream_info("BENCH")).state.messages == messages
            return messages / elapsed
        finally:
            await nc.drain()
    finally:
        await server.stop()


async def intake_rate(work: Path, *, sync_always: bool, jobs: int, nats_servers: int) -> float:
    """Jobs per second from the first submit until every job has its record in KV."""
    stack = Stack(
        StackConfig(
            data_dir=work / "stack",
            nodes=1,
            nats_port=-1,
            http_port=0,
            nats_servers=nats_servers,
            nats_sync_always=sync_always,
            env={"JOBQ_QUEUE_LIMITS": f"{QUEUE}=0"},
        )
    )
    try:
        await stack.start()
        for server in stack.nats_cluster:
            assert (await server.varz())["jetstream"]["config"].get("sync_always", False) is sync_always
        async with JobqClient(stack.nats_url,
                              nats_options=stack.nats_options(), name="bench-fsync") as client:
            ids = {f"fsync-{i:05d}" for i in range(jobs)}
            kv = await client.js.key_value("jobq_jobs")
            watcher = await kv.watchall(meta_only=True)
            seen: set[str] = set()

            async def recorded() -> None:
                async for entry in watcher:
                    if entry is not None:
                        seen.add(entry.key)
                        if ids <= seen:
                            return

            gate = asyncio.Semaphore(SUBMIT_IN_FLIGHT)

            async def submit(job_id: str) -> None:
                async with gate:
                    await client.submit(id=job_id, queue=QUEUE, task="demo.sleep", args={"seconds": 1})

            try:
                started = time.perf_counter()
                watching = asyncio.create_task(recorded())
                await asyncio.gather(*(submit(i) for i in sorted(ids)))
                await asyncio.wait_for(watching, 300)
                return jobs / (time.perf_counter() - started)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]
    finally:
        await stack.stop()


async def rounds(
    label: str, count: int, measure: Callable[[Path, bool], Awaitable[float]]
) -> dict[str, float]:
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for n in range(count):
        for mode, sync_always in MODES.items():
            with tempfile.TemporaryDirectory(prefix="jobq-fsync-") as work:
                rate = await measure(Path(work), sync_always)
            samples[mode].append(rate)
            print(f"  {label} round {n + 1} sync {mode:<7} {rate:10,.0f}/s", flush=True)
    return {mode: statistics.median(values) for mode, values in samples.items()}


def report(label: str, unit: str, medians: dict[str, float]) -> None:
    always, default = medians["always"], medians["default"]
    print(
        f"{label:<10} always {always:10,.0f} {unit}   default {default:10,.0f} {unit}   "
        f"always/default {always / default:.2f}  (default is {default / always:.1f}x faster)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (median is reported)")
    parser.add_argument("--messages", type=int, default=10_000, help="publishes per round")
    parser.add_argument("--jobs", type=int, default=500, help="jobs submitted per intake round")
    parser.add_argument(
        "--nats-servers", type=int, choices=[1, 3], default=1, help="intake on 1 or 3 servers (R3)"
    )
    args = parser.parse_args()
    print(
        f"fsync cost: sync_interval always vs nats-server's default, {args.rounds} round(s) each", flush=True
    )
    publish = await rounds(
        "publish",
        args.rounds,
        lambda work, sync: publish_rate(work, sync_always=sync, messages=args.messages),
    )
    intake = await rounds(
        "intake",
        args.rounds,
        lambda work, sync: intake_rate(
            work, sync_always=sync, jobs=args.jobs, nats_servers=args.nats_servers
        ),
    )
    print()
    report("publish", "acks/s", publish)
    report("intake" if args.nats_servers == 1 else "intake R3", "jobs/s", intake)


if __name__ == "__main__":
    asyncio.run(main())
