"""Submit → attempt running, p50/p99: idle, and behind a 1,000-job backlog on another queue
(issue 14).

An embedded stack (durable default unless ``JOBQ_NATS_SYNC=default``) whose one node a ``sleep``
job mostly fills (bench/full_node.py): a quick job (``command: ["true"]``, 0.25 CPU) still fits
next to it. Quick jobs are submitted one at a time through the SDK, each after the previous one
ended. A job's latency is its first attempt's ``started_at`` (the pod seen running: the node
agent's start time) minus the record's ``submitted_at`` (the submission's JetStream timestamp),
both from the job record; all clocks are this machine's.

- ``idle``: nothing else in the stack.
- ``backlog``: first ``--backlog`` jobs are submitted on queue ``bench-backlog`` and wait (every
  record in before the quick jobs start): with ``--wait-on node`` (default) they fit the full
  node later, with ``--wait-on queue`` that queue's running limit is 0 (``JOBQ_QUEUE_LIMITS``).

    .venv/bin/python -m bench.latency                    # ~2-3 min
    .venv/bin/python -m bench.latency --jobs 200 --backlog 1000 --wait-on queue
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from pathlib import Path

from bench.full_node import QUICK, WAITING, RecordWatch, start_full, submit_all
from broker.embedded.natsserver import sync_always_from_env
from submitter.client import JobqClient

QUEUE = "bench-latency"
BACKLOG_QUEUE = "bench-backlog"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def latencies(client: JobqClient, prefix: str, jobs: int) -> tuple[list[float], int]:
    """Seconds from submit to attempt running for ``jobs`` quick jobs, one at a time; and how
    many had no start time (none is expected)."""
    samples: list[float] = []
    missing = 0
    for i in range(jobs):
        job_id = f"{prefix}-{i:04d}"
        await client.submit(id=job_id, queue=QUEUE, **QUICK)
        record = (await client.wait([job_id], timeout=60))[job_id]
        first = record.attempts[0] if record.attempts else None
        if first is None or first.started_at is None:
            missing += 1
            continue
        samples.append((first.started_at - record.submitted_at).total_seconds())
    return samples, missing


def summary(label: str, samples: list[float], missing: int) -> str:
    ms = [1000 * s for s in samples]
    line = (
        f"{label:<22} p50 {percentile(ms, 50):7.1f} ms   p99 {percentile(ms, 99):7.1f} ms   "
        f"max {max(ms):7.1f} ms   n={len(ms)}"
    )
    return line + (f"  ({missing} without a start time)" if missing else "")


async def run(args: argparse.Namespace) -> list[str]:
    env = {"JOBQ_QUEUE_LIMITS": f"{BACKLOG_QUEUE}=0"} if args.wait_on == "queue" else {}
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="jobq-bench-latency-") as work:
        stack = await start_full(Path(work), sync_always=sync_always_from_env(), env=env)
        try:
            async with JobqClient(stack.nats_url,
                                  nats_options=stack.nats_options(), name="bench-latency") as client:
                await latencies(client, "warm", 3)  # first pods pay imports the others find cached
                samples, missing = await latencies(client, "idle", args.jobs)
                lines.append(summary("idle", samples, missing))
                print("  " + lines[-1], flush=True)
                if args.backlog:
                    ids = [f"backlog-{i:05d}" for i in range(args.backlog)]
                    waiting = (
                        {**WAITING, "resources": {"cpu": 0.25, "memory": "64Mi"}}
                        if args.wait_on == "queue"
                        else WAITING
                    )
                    watch = RecordWatch(client, ids)
                    await watch.start()
                    try:
                        t0 = time.perf_counter()
                        await submit_all(client, ({"id": i, "queue": BACKLOG_QUEUE, **waiting} for i in ids))
                        if not await watch.wait(300):
                            raise RuntimeError(f"only {len(watch.seen)} backlog records after 300 s")
                        took = time.perf_counter() - t0
                        print(f"  backlog of {args.backlog} in after {took:.1f}s", flush=True)
                    finally:
                        await watch.stop()
                    await asyncio.sleep(args.settle)
                    samples, missing = await latencies(client, "behind", args.jobs)
                    lines.append(summary(f"behind {args.backlog} ({args.wait_on})", samples, missing))
                    print("  " + lines[-1], flush=True)
        finally:
            await stack.stop()
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100, help="quick jobs per measurement")
    parser.add_argument("--backlog", type=int, default=1000, help="waiting jobs on another queue (0: skip)")
    parser.add_argument(
        "--wait-on",
        choices=["node", "queue"],
        default="node",
        help="node: backlog fits the full node later; queue: its queue's limit is 0",
    )
    parser.add_argument("--settle", type=float, default=6.0, help="pause after the backlog's intake, s")
    args = parser.parse_args()
    sync = "always" if sync_always_from_env() else "default"
    print(
        f"latency: submit -> attempt running, {args.jobs} quick jobs one at a time, nats sync {sync}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    lines = await run(args)
    print()
    for line in lines:
        print(f"latency {line}")


if __name__ == "__main__":
    asyncio.run(main())
