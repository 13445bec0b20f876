"""Dispatcher CPU with a backlog: % of one core the leader uses at steady state with 0, 1,000 and
10,000 jobs waiting (issue 14: cost should grow with changes, not with queue length).

An embedded stack (durable default unless ``JOBQ_NATS_SYNC=default``) whose one node a ``sleep``
job fills (bench/full_node.py). Waiting jobs either fit the node but not now (``--wait-on node``,
the default: a sweep bigger than the cluster), or sit in a queue whose running limit is 0
(``--wait-on queue``, ``JOBQ_QUEUE_LIMITS``). For each backlog size, in one stack: submit the
jobs that make it up (through the SDK, 256 publishes in flight), wait until each has its record,
let it settle (``--settle``), then read utime+stime of the dispatcher process (its pid as in
``stack.json``) from ``/proc/<pid>/stat`` at both ends of a ``--window`` s window: CPU-seconds
per wall second. The reconcile passes in the window (``jobq_reconciles`` on ``/metrics``, read at
both ends) say what the CPU went into.

The run is capped at ``--budget`` s (default 300, with stack start-up): a backlog whose records
are not all in by then is not measured, and the report says so.

    .venv/bin/python -m bench.backlog                           # ~3-5 min
    .venv/bin/python -m bench.backlog --sizes 0 1000 --wait-on queue --window 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench import metrics_read
from bench.full_node import WAITING, RecordWatch, start_full, submit_all
from broker.embedded.natsserver import sync_always_from_env
from broker.embedded.stack import Stack
from submitter.client import JobqClient

QUEUE = "bench-backlog"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5)


async def reconciles(stack: Stack) -> float | None:
    text = await metrics_read.metrics_text(stack)
    return None if text is None else metrics_read.sample(text, "jobq_reconciles_total")


async def measure(stack: Stack, window: float) -> tuple[float, float | None]:
    """(% of a core, reconciles per second) over ``window`` seconds."""
    pid = stack.dispatchers[0].pid
    passes0 = await reconciles(stack)
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(window)
    cpu1, wall1 = cpu_seconds(pid), time.perf_counter()
    passes1 = await reconciles(stack)
    wall = wall1 - wall0
    rate = (passes1 - passes0) / wall if passes0 is not None and passes1 is not None else None
    return 100 * (cpu1 - cpu0) / wall, rate


async def run(args: argparse.Namespace) -> list[str]:
    started = time.monotonic()
    env = {"JOBQ_QUEUE_LIMITS": f"{QUEUE}=0"} if args.wait_on == "queue" else {}
    fields = (
        {"resources": {"cpu": 0.25, "memory": "64Mi"}, "command": ["sleep", "1"]}
        if args.wait_on == "queue"
        else {k: v for k, v in WAITING.items()}
    )
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="jobq-bench-backlog-") as work:
        stack = await start_full(Path(work), sync_always=sync_always_from_env(), env=env)
        try:
            async with JobqClient(stack.nats_url,
                                  nats_options=stack.nats_options(), name="bench-backlog") as client:
                waiting = 0
                for size in sorted(args.sizes):
                    ids = [f"wait-{i:05d}" for i in range(waiting, size)]
                    left = args.budget - (time.monotonic() - started) - args.settle - args.window
                    if left <= 0:
                        lines.append(f"{size:>6} waiting: skipped (budget {args.budget:.0f}s used)")
                        continue
                    watch = RecordWatch(client, ids)
                    await watch.start()
                    try:
                        t0 = time.perf_counter()
                        await submit_all(client, ({"id": i, "queue": QUEUE, **fields} for i in ids))
                        complete = await watch.wait(left)
                        took = time.perf_counter() - t0
                    finally:
                        await watch.stop()
                    if not complete:
                        lines.append(
                            f"{size:>6} waiting: skipped, only {waiting + len(watch.seen)} records "
                            f"after {took:.0f}s of intake (budget {args.budget:.0f}s)"
                        )
                        break
                    waiting = size
                    if ids:
                        print(
                            f"  {size} waiting: records in after {took:.1f}s "
                            f"({len(ids) / took:,.0f} jobs/s intake while the backlog grew)",
                            flush=True,
                        )
                    await asyncio.sleep(args.settle)
                    cpu, passes = await measure(stack, args.window)
                    line = f"{size:>6} waiting: dispatcher CPU {cpu:5.1f} % of a core over {args.window:.0f}s"
                    line += f", {passes:,.0f} reconciles/s" if passes is not None else ""
                    print("  " + line, flush=True)
                    lines.append(line)
        finally:
            await stack.stop()
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 10_000])
    parser.add_argument(
        "--wait-on",
        choices=["node", "queue"],
        default="node",
        help="node: fits the full node later; queue: the queue's limit is 0",
    )
    parser.add_argument("--window", type=float, default=20.0, help="CPU window, s")
    parser.add_argument("--settle", type=float, default=6.0, help="pause after intake, s")
    parser.add_argument("--budget", type=float, default=300.0, help="cap on the whole run, s")
    args = parser.parse_args()
    sync = "always" if sync_always_from_env() else "default"
    print(
        f"backlog: dispatcher CPU, jobs waiting on a {args.wait_on}, nats sync {sync}, {os.cpu_count()} CPUs",
        flush=True,
    )
    lines = await run(args)
    print()
    for line in lines:
        print(f"backlog ({args.wait_on}) {line}")


if __name__ == "__main__":
    asyncio.run(main())
