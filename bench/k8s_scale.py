"""Scale: jobq's dispatcher with many kwok nodes and many jobs: memory per job and reconcile latency.

One control plane (stock settings) and kwok keeping ``--nodes`` (1,000) fake nodes Ready; an
embedded jobq stack (NATS + one dispatcher, ``JOBQ_BACKEND=kubernetes``, jobq's defaults). The
``--jobs`` (20,000) jobs (``sleep 3600``, 100m CPU, 64Mi; 1,000 nodes × 110 pods hold them all)
are submitted through the SDK, 256 publishes in flight, each stamped when its submit was sent.

Measured:

- dispatcher memory: RSS (``VmRSS`` of the dispatcher process) once the stack is up and the
  backend's caches hold the nodes and Leases, and again when every job's pod is Running (plus
  ``--settle`` s); the difference divided by the jobs (all of them unfinished: their pods run);
  ``VmHWM`` (peak) too;
- latency per job, from its submit to its pod first seen by a watch on the API server (created)
  and to the pod seen Running: p50 / p99 / max;
- from the dispatcher's ``/metrics``: ``jobq_reconciles_total`` and
  ``jobq_dispatch_latency_seconds`` (sum / count) at the end.

The run stops waiting after ``--timeout`` s; whatever was Running by then is reported, with the
count, so a machine that cannot do it all still gives exact figures for what it did.

    .venv/bin/python -m bench.k8s_scale                          # 1,000 nodes, 20,000 jobs
    .venv/bin/python -m bench.k8s_scale --nodes 200 --jobs 2000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from bench import kwok_run, metrics_read
from bench.k8s_cluster import KwokCluster, say
from broker.embedded.stack import Stack
from submitter.client import JobqClient

NAMESPACE = "bench-scale"
JOB_LABEL = "jobq.dev/job-id"


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(kwok_run.p99(ordered), 2),
        "max": round(ordered[-1], 2),
        "n": len(ordered),
    }


async def scrape(stack: Stack) -> dict[str, float]:
    text = await metrics_read.metrics_text(stack)
    if text is None:
        return {}
    found: dict[str, float] = {}
    for name in ("jobq_reconciles_total", "jobq_reconcile_errors_total"):
        value = metrics_read.sample(text, name)
        if value is not None:
            found[name] = value
    for part in ("sum", "count"):
        name = f"jobq_dispatch_latency_seconds_{part}"
        total = metrics_read.labelled_sum(text, name)
        if total is not None:
            found[name] = total
    return found


async def submit_stamped(client: JobqClient, count: int, *, in_flight: int = 256) -> dict[str, float]:
    """Submit ``count`` jobs; job id -> wall-clock time its submit was sent."""
    gate = asyncio.Semaphore(in_flight)
    sent: dict[str, float] = {}

    async def one() -> None:
        async with gate:
            at = time.time()
            handle = await client.submit(
                command=list(kwok_run.COMMAND), resources={"cpu": kwok_run.CPU, "memory": kwok_run.MEMORY}
            )
            sent[handle.id] = at

    await asyncio.gather(*(one() for _ in range(count)))
    return sent


async def run(cluster: KwokCluster, args: argparse.Namespace) -> dict[str, Any]:
    stack = kwok_run.jobq_stack(args.work, cluster, NAMESPACE, label="stack: ")
    assert cluster.watch is not None
    try:
        await stack.start()
        pid = stack.dispatchers[0].pid
        await asyncio.sleep(args.settle)  # the backend lists the nodes and Leases
        rss_before = kwok_run.rss_bytes(pid)
        meter = kwok_run.CpuMeter(cluster.pids())
        meter.add("dispatcher", pid)
        async with JobqClient(stack.nats_url, nats_options=stack.nats_options()) as client:
            started = time.time()
            sent = await submit_stamped(client, args.jobs)
            submitted_s = time.time() - started
            say(
                f"{args.jobs} submits returned in {submitted_s:.1f}s; "
                f"dispatcher RSS {kwok_run.rss_bytes(pid) / 2**20:.0f} MiB"
            )
            deadline = time.monotonic() + args.timeout
            next_report = time.monotonic() + 15
            while True:
                running = len(cluster.watch.running_labels_in(NAMESPACE, JOB_LABEL) & sent.keys())
                if running >= args.jobs or time.monotonic() > deadline:
                    break
                if time.monotonic() > next_report:
                    next_report += 15
                    say(
                        f"{running}/{args.jobs} Running after {time.time() - started:.0f}s; dispatcher RSS "
                        f"{kwok_run.rss_bytes(pid) / 2**20:.0f} MiB"
                    )
                await asyncio.sleep(0.5)
            all_s = time.time() - started
            await asyncio.sleep(args.settle)
            rss_after, hwm = kwok_run.rss_bytes(pid), kwok_run.vm_hwm(pid)
            metrics = await scrape(stack)
            cpu = meter.stop()
    finally:
        await stack.stop()
    pods = [p for p in cluster.watch.pods_in(NAMESPACE) if p.labels.get(JOB_LABEL) in sent]
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    for p in pods:  # a job's first pod (a retried job has more than one)
        job = p.labels[JOB_LABEL]
        created[job] = min(created.get(job, p.first_seen), p.first_seen)
        if p.running_seen is not None:
            running[job] = min(running.get(job, p.running_seen), p.running_seen)
    created_lat = [t - sent[j] for j, t in created.items()]
    running_lat = [t - sent[j] for j, t in running.items()]
    reached = len(running_lat)
    per_job = (rss_after - rss_before) / max(len(sent), 1)  # every submitted job is unfinished
    return {
        "nodes": args.nodes,
        "jobs": args.jobs,
        "running": reached,
        "submitted_s": round(submitted_s, 1),
        "all_running_s": round(all_s, 1) if reached >= args.jobs else None,
        "elapsed_s": round(all_s, 1),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_peak_mib": round(hwm / 2**20, 1),
        "bytes_per_job": round(per_job),
        "pods": len(pods),
        "submit_to_created_s": quantiles(created_lat),
        "submit_to_running_s": quantiles(running_lat),
        "metrics": metrics,
        "cpu_s": cpu,
    }


def markdown(r: dict[str, Any], total_s: float) -> str:
    def q(d: dict[str, Any]) -> str:
        return f"{d['p50']} / {d['p99']} / {d['max']}"

    reached = f"{r['running']}/{r['jobs']}"
    m = r["metrics"]
    count = m.get("jobq_dispatch_latency_seconds_count")
    mean = f"{m['jobq_dispatch_latency_seconds_sum'] / count:.2f}s mean over {count:.0f}" if count else "—"
    return "\n".join(
        [
            "| what | value |",
            "|---|---|",
            f"| nodes / jobs Running | {r['nodes']} / {reached} (in {r['elapsed_s']}s; submits returned at "
            f"{r['submitted_s']}s) |",
            f"| dispatcher RSS before → after (peak) | {r['rss_before_mib']} → {r['rss_after_mib']} MiB "
            f"({r['rss_peak_mib']} MiB) |",
            f"| dispatcher memory per unfinished job | {r['bytes_per_job'] / 1024:.1f} KiB |",
            f"| submit → pod created p50 / p99 / max (s) | {q(r['submit_to_created_s'])} |",
            f"| submit → pod Running p50 / p99 / max (s) | {q(r['submit_to_running_s'])} |",
            f"| jobq_reconciles_total | {m.get('jobq_reconciles_total', '—')} |",
            f"| jobq_dispatch_latency_seconds | {mean} |",
            f"| CPU-s per process | {r['cpu_s']} |",
            "",
            f"One run, total {total_s / 60:.1f} min (cluster start-up included).",
        ]
    )


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="stop waiting for Running after this long"
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each memory reading")


def main() -> None:
    args = kwok_run.arg_parser(__doc__, add_args).parse_args()

    def cluster(state_dir: Path) -> KwokCluster:
        return KwokCluster(
            state_dir,
            node_count=args.nodes,
            max_pods=max(110, -(-args.jobs // max(args.nodes, 1)) + 10),
        )

    result, total_s = kwok_run.run_on_kwok(
        args, prefix="jobq-bench-scale-", cluster=cluster, run=lambda c: run(c, args)
    )
    kwok_run.report(markdown(result, total_s), result, as_json=args.json)


if __name__ == "__main__":
    main()
