"""Kubernetes dispatch: how long until N jobs have pods Running, jobq against a ``batch/v1`` Job per
job and against a bare concurrent pod-create loop, on one API server with hundreds of kwok nodes.

One control plane (stock settings: kube-controller-manager with its default ``--kube-api-qps`` 20 /
burst 30 and ``--concurrent-job-syncs`` 5, kube-scheduler with its default client QPS 50 / burst
100) and one kwok process that keeps ``--nodes`` fake nodes Ready and moves every pod bound to one
of them to Running (kwok's default stages; pods owned by a Job are *not* completed unless
``--complete-job-pods``, so every row's pods stay Running like jobq's). Each row gets a fresh
namespace, which is emptied and deleted before the next row:

- ``bare``: the ceiling. A kubernetes_asyncio loop creates the N pods, ``--in-flight`` (64) at
  once, each exactly the manifest jobq's backend would create for the job (``pod_manifest``).
- ``job``: N Jobs (``parallelism 1``, ``completions 1``, the same pod as template), created by
  the same loop; the Job controller creates the pods.
- ``jobq``: an embedded jobq stack (NATS + one dispatcher, ``JOBQ_BACKEND=kubernetes``, jobq's
  defaults, the durable NATS default unless ``JOBQ_NATS_SYNC=default``); the N jobs are
  submitted through the SDK (256 publishes in flight), the dispatcher creates the pods.

Every job is ``command: [sleep, 3600]`` requesting 100m CPU and 64Mi. Time: from the row's first
create/submit until the N-th pod of the row was seen Running by a watch on the API server (phase
Running, no deletionTimestamp; stamped when the event arrived). The table also gives the time by
which every create/submit had returned, the first pod seen Running, and the CPU-seconds each
process (API server, etcd, controller manager, scheduler, kwok, dispatcher, NATS) spent in the row.

    .venv/bin/python -m bench.k8s_dispatch                       # 2,000 jobs, 200 nodes, ~6-10 min
    .venv/bin/python -m bench.k8s_dispatch --jobs 500 --only bare --only jobq --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bench import kwok_run
from bench.full_node import submit_all
from bench.k8s_cluster import KwokCluster, say
from broker import contract
from broker.backends import k8s_objects
from broker.k8sapi import ApiError, call
from submitter.client import JobqClient

ROWS = ("bare", "job", "jobq")
TITLES = {"bare": "bare pod-create loop (ceiling)", "job": "batch/v1 Job per job", "jobq": "jobq"}


def pod_body(index: int, namespace: str) -> dict[str, Any]:
    """The pod jobq's backend would create for job ``index`` (same manifest, same validation)."""
    job_id = f"b{index:06d}"
    spec = contract.PodSpec(
        name=f"job-{job_id}-1",
        job_id=job_id,
        attempt=1,
        queue="default",
        command=kwok_run.COMMAND,
        resources=contract.Resources(cpu=kwok_run.CPU, memory=kwok_run.MEMORY),
    )
    return k8s_objects.pod_manifest(spec, namespace=namespace, image="jobq-task")


def job_body(index: int, namespace: str) -> dict[str, Any]:
    pod = pod_body(index, namespace)
    template = {"metadata": {"labels": {"bench": "job"}}, "spec": pod["spec"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"job-{index:06d}", "namespace": namespace},
        "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 6, "template": template},
    }


async def api_client(kubeconfig: Path) -> k8s.ApiClient:
    return await k8s_config.new_client_from_config(config_file=str(kubeconfig))


async def create_all(make: Callable[[int], Awaitable[Any]], count: int, *, in_flight: int) -> None:
    """``make(i)`` for every i, ``in_flight`` at once; 429/5xx retried."""
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            for attempt in range(20):
                try:
                    await call(make(i))
                    return
                except ApiError as exc:
                    if exc.status != 429 and exc.status < 500:
                        raise
                    await asyncio.sleep(exc.retry_after or min(0.1 * 2**attempt, 2.0))

    await asyncio.gather(*(one(i) for i in range(count)))


async def ensure_namespace(api: k8s.ApiClient, name: str) -> None:
    core: Any = k8s.CoreV1Api(api)
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    with contextlib.suppress(ApiError):
        await call(core.create_namespace(body, _preload_content=False))
    for _ in range(200):  # pods that mount no token still need the default ServiceAccount admitted
        try:
            await call(core.read_namespaced_service_account("default", name, _preload_content=False))
            return
        except ApiError:
            await asyncio.sleep(0.1)


async def clean_namespace(
    cluster: KwokCluster, api: k8s.ApiClient, name: str, *, timeout: float = 600
) -> float:
    """Delete the row's Jobs and pods (grace 0; kwok removes them) and the namespace; wait until
    the watch saw every pod go and the namespace is gone. Returns the seconds it took."""
    started = time.monotonic()
    core: Any = k8s.CoreV1Api(api)
    batch: Any = k8s.BatchV1Api(api)
    with contextlib.suppress(ApiError):
        await call(
            batch.delete_collection_namespaced_job(
                name, propagation_policy="Background", _preload_content=False
            )
        )
    with contextlib.suppress(ApiError):
        await call(
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0, _preload_content=False)
        )
    with contextlib.suppress(ApiError):
        await call(core.delete_namespace(name, _preload_content=False))
    assert cluster.watch is not None
    while time.monotonic() - started < timeout:
        try:
            await call(core.read_namespace(name, _preload_content=False))
        except ApiError as exc:
            if exc.status == 404 and cluster.watch.live_in(name) == 0:
                break
        await asyncio.sleep(0.5)
    else:
        say(f"WARNING: namespace {name} still there after {timeout:.0f}s")
    return time.monotonic() - started


async def wait_running(
    cluster: KwokCluster, namespace: str, count: int, *, started: float, timeout: float, what: str
) -> tuple[float | None, float | None]:
    """(first, last) Running time relative to ``started`` (wall clock), None if not all in time."""
    assert cluster.watch is not None
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 15
    while True:
        running, last = cluster.watch.running_in(namespace)
        if running >= count:
            pods = cluster.watch.pods_in(namespace)
            first = min((p.running_seen for p in pods if p.running_seen), default=None)
            return (None if first is None else first - started), (None if last is None else last - started)
        if time.monotonic() > deadline:
            say(f"{what}: only {running}/{count} Running after {timeout:.0f}s; giving up")
            return None, None
        if time.monotonic() > next_report:
            next_report += 15
            say(f"{what}: {running}/{count} Running, {time.time() - started:.0f}s")
        await asyncio.sleep(0.25)


def creator(row: str, api: k8s.ApiClient, namespace: str) -> Callable[[int], Awaitable[Any]]:
    """How a row other than ``jobq`` makes job ``i``: ``bare`` creates its pod, ``job`` a Job."""
    if row == "bare":
        core: Any = k8s.CoreV1Api(api)
        return lambda i: core.create_namespaced_pod(namespace, pod_body(i, namespace), _preload_content=False)
    batch: Any = k8s.BatchV1Api(api)
    return lambda i: batch.create_namespaced_job(namespace, job_body(i, namespace), _preload_content=False)


async def run_creates(
    cluster: KwokCluster, api: k8s.ApiClient, namespace: str, args: argparse.Namespace, *, row: str
) -> dict[str, Any]:
    """The ``bare`` and ``job`` rows: ``creator(row)`` for every job, ``--in-flight`` at once,
    then wait for the pods to be Running."""
    make = creator(row, api, namespace)
    started = time.time()
    await create_all(make, args.jobs, in_flight=args.in_flight)
    submitted = time.time() - started
    first, last = await wait_running(
        cluster, namespace, args.jobs, started=started, timeout=args.timeout, what=row
    )
    return {"submitted_s": submitted, "first_s": first, "all_s": last}


def jobq_specs(count: int) -> Iterable[dict[str, Any]]:
    return (
        {"command": list(kwok_run.COMMAND), "resources": {"cpu": kwok_run.CPU, "memory": kwok_run.MEMORY}}
        for _ in range(count)
    )


async def run_jobq(
    cluster: KwokCluster, namespace: str, args: argparse.Namespace, meter: kwok_run.CpuMeter
) -> dict[str, Any]:
    stack = kwok_run.jobq_stack(args.work, cluster, namespace, label="jobq: stack: ")
    try:
        await stack.start()
        dispatcher = stack.dispatchers[0].pid
        meter.add("dispatcher", dispatcher)
        if stack.nats is not None and stack.nats.process is not None:
            meter.add("nats-server", stack.nats.process.pid)
        rss_before = kwok_run.rss_bytes(dispatcher)
        async with JobqClient(stack.nats_url, nats_options=stack.nats_options()) as client:
            started = time.time()
            await submit_all(client, jobq_specs(args.jobs))
            submitted = time.time() - started
            first, last = await wait_running(
                cluster, namespace, args.jobs, started=started, timeout=args.timeout, what="jobq"
            )
        meter.stop()  # while the dispatcher and nats-server still run
        return {
            "submitted_s": submitted,
            "first_s": first,
            "all_s": last,
            "dispatcher_rss_mib": [
                round(rss_before / 2**20, 1),
                round(kwok_run.rss_bytes(dispatcher) / 2**20, 1),
            ],
            "dispatcher_log": str(stack.logs / "dispatcher-0.log"),
        }
    finally:
        await stack.stop()


def stage_lags(cluster: KwokCluster, namespace: str) -> dict[str, Any]:
    """Per pod: created -> bound (the scheduler) and bound -> Running (kwok), p50 / p99 in s."""
    assert cluster.watch is not None
    pods = cluster.watch.pods_in(namespace)

    def q(values: list[float]) -> list[float] | None:
        if not values:
            return None
        ordered = sorted(values)
        return [round(ordered[len(ordered) // 2], 2), round(kwok_run.p99(ordered), 2)]

    return {
        "created_to_bound_s": q([p.bound_seen - p.first_seen for p in pods if p.bound_seen]),
        "bound_to_running_s": q(
            [p.running_seen - p.bound_seen for p in pods if p.running_seen and p.bound_seen]
        ),
    }


async def run_rows(cluster: KwokCluster, args: argparse.Namespace) -> list[dict[str, Any]]:
    api = await api_client(cluster.kubeconfig)
    results = []
    try:
        for key in args.rows:
            namespace = f"bench-{key}"
            await ensure_namespace(api, namespace)
            say(f"=== {key}: {TITLES[key]}: {args.jobs} jobs on {args.nodes} kwok nodes")
            meter = kwok_run.CpuMeter(cluster.pids())
            load = os.getloadavg()[0]
            if key == "jobq":
                result = await run_jobq(cluster, namespace, args, meter)
            else:
                result = await run_creates(cluster, api, namespace, args, row=key)
            cpu = meter.stop()
            result.update(stage_lags(cluster, namespace))
            result.update(
                row=key, title=TITLES[key], jobs=args.jobs, cpu_s=cpu, loadavg_before=round(load, 2)
            )
            if result["all_s"]:
                result["jobs_per_s"] = round(args.jobs / result["all_s"], 1)
            say(
                f"{key}: all {args.jobs} Running after {fmt(result['all_s'])}s (creates/submits returned at "
                f"{fmt(result['submitted_s'])}s); CPU-s {cpu}"
            )
            results.append(result)
            cleaned = await clean_namespace(cluster, api, namespace)
            say(f"{key}: namespace cleaned in {cleaned:.1f}s")
    finally:
        await api.close()
    return results


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def pair(values: list[float] | None) -> str:
    return "—" if not values else f"{values[0]:g} / {values[1]:g}"


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, total_s: float) -> str:
    lines = [
        "| row | all Running (s) | jobs/s | creates/submits returned (s) | first Running (s) "
        "| created→bound p50/p99 (s) | bound→Running p50/p99 (s) "
        "| CPU-s: apiserver / etcd / kcm / scheduler / kwok / dispatcher / nats |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        cpu = r["cpu_s"]
        parts = " / ".join(
            f"{cpu[k]:g}" if k in cpu else "—"
            for k in (
                "kube-apiserver",
                "etcd",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
                "dispatcher",
                "nats-server",
            )
        )
        lines.append(
            f"| {r['title']} | {fmt(r['all_s'])} | {r.get('jobs_per_s', '—')} | "
            f"{fmt(r['submitted_s'])} | {fmt(r['first_s'])} | {pair(r.get('created_to_bound_s'))} "
            f"| {pair(r.get('bound_to_running_s'))} | {parts} |"
        )
    by = {r["row"]: r for r in results}
    lines.append("")
    ratios = []
    jobq = by.get("jobq", {}).get("all_s")
    for other, label in (("job", "jobq / Job controller"), ("bare", "jobq / bare loop")):
        theirs = by.get(other, {}).get("all_s")
        if jobq and theirs:
            ratios.append(f"{label}: {theirs / jobq:.2f}× the speed (time {theirs:.1f}s vs {jobq:.1f}s)")
    lines += [f"- {r}" for r in ratios]
    lines.append(
        f"\n{args.jobs} jobs (100m CPU, 64Mi each), {args.nodes} kwok nodes, one API server; "
        f"bare/Job creates {args.in_flight} in flight; one run, total {total_s / 60:.1f} min."
    )
    return "\n".join(lines)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent creates of the bare/Job loops")
    parser.add_argument(
        "--only",
        choices=ROWS,
        action="append",
        metavar="ROW",
        help=f"run only this row (repeatable, in this order): {', '.join(ROWS)}",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a row after this long")
    parser.add_argument(
        "--complete-job-pods",
        action="store_true",
        help="kwok completes Job-owned pods right after Running (kwokctl's default)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = kwok_run.arg_parser(__doc__, add_args).parse_args(argv)
    args.rows = args.only or list(ROWS)
    return args


def main() -> None:
    args = parse_args()

    def cluster(state_dir: Path) -> KwokCluster:
        return KwokCluster(state_dir, node_count=args.nodes, complete_job_pods=args.complete_job_pods)

    results, total_s = kwok_run.run_on_kwok(
        args, prefix="jobq-bench-dispatch-", cluster=cluster, run=lambda c: run_rows(c, args)
    )
    kwok_run.report(markdown(results, args, total_s), {"rows": results}, as_json=args.json)


if __name__ == "__main__":
    main()
