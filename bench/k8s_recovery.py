"""Node death on a real control plane: how long until each workload runs again elsewhere.

Every row runs on a fresh control plane with ten simulated kubelets at the stock kubelet cadence
(Lease 40 s, renewed every 10 s; started 1 s apart, so the renewals are spread). Each row starts
five workloads that request 3 of a node's 4 CPUs, so each lands on its own node and five empty
nodes are left to take the replacements; every node is its own topology zone, so the node
lifecycle controller keeps evicting while five of the ten are down. Then it kills the five busy
machines at once (``devcluster.nodes.kill_node``: the kubelet *and* its pod processes are
SIGKILLed) and measures, per workload, the seconds from its node's kill until a replacement pod of
that workload is Running on another node.

Rows (``--only``; repeatable):

- ``job-stock``: a ``batch/v1`` Job per workload; control plane on upstream defaults
  (node-monitor-period 5 s, grace 50 s, eviction 0.1/s, default tolerations 300 s). ~6 min.
- ``job-fast``: the same with ``ControlPlaneConfig.fastest_safe()`` (grace 20 s, period 1 s,
  tolerations 1 s, eviction 10/s), plus ``tolerationSeconds: 1`` for the ``unreachable`` and
  ``not-ready`` taints in the Job's pod template.
- ``jobq``: jobq jobs (task ``demo.sleep``) through a jobq stack (NATS + one dispatcher,
  ``JOBQ_BACKEND=kubernetes``, jobq's default settings) on the stock control plane.
- ``jobq-busy``: as ``jobq``, plus one small jobq job (0.5 CPU) on each spare node before the
  kill. jobq calls a node dead from its attempts' heartbeats (5 s) only while attempts on *other*
  nodes still beat (docs/design/node-loss.md); in ``jobq`` every beating node dies at once, so
  the per-attempt heartbeat timeout (10 s) or the Lease (40 s) decides. This row is the common
  case, a cluster with other work on the survivors.

The table also counts replacement pods the scheduler bound to *another* killed node (a dead node
still looks Ready to the scheduler until the node lifecycle controller taints it); such a pod
never runs, and the workload waits for the next replacement.

"Running" is what a watch on the API server delivers: the pod's phase is Running, it has no
deletionTimestamp and its node is not one of the killed ones; the time is when the bench received
that event (wall clock, the same clock the kill was stamped with). The container's ``startedAt``
(whole seconds, written by the kubelet) is reported alongside in ``--json``.

    .venv/bin/python -m bench.k8s_recovery                  # every row, ~10 min
    .venv/bin/python -m bench.k8s_recovery --only job-fast --only jobq --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.k8s_cluster import KUBELET_CADENCE, NODE_COUNT, NODE_CPU, Cluster, say
from bench.k8s_measure import (
    BYSTANDER_CPU,
    ROWS,
    SETTLE_S,
    WORKLOAD_CPU,
    WORKLOAD_MEMORY,
    WORKLOAD_SECONDS,
    WORKLOADS,
    Row,
    Sample,
    false_not_ready,
    kill_and_measure,
    percentile50,
    rel,
    wait_placed,
)
from broker.embedded.stack import Stack, StackConfig
from devcluster.build import ensure_binaries
from submitter.client import JobqClient

JOB_NAMESPACE = "bench"
JOBQ_NAMESPACE = "bench-jobq"
JOB_LABEL = "job-name"
JOBQ_LABEL = "jobq.dev/job-id"


# --- rows -----------------------------------------------------------------------------------------


def job_manifest(name: str, row: Row) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 10,
        "containers": [{"name": "main", "image": "busybox", "command": ["sleep", str(WORKLOAD_SECONDS)],
                        "resources": {"requests": {"cpu": f"{WORKLOAD_CPU:g}", "memory": WORKLOAD_MEMORY},
                                      "limits": {"memory": WORKLOAD_MEMORY}}}],
    }
    if row.pod_toleration_s is not None:
        pod_spec["tolerations"] = [
            {"key": key, "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": row.pod_toleration_s}
            for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": JOB_NAMESPACE},
            "spec": {"backoffLimit": 6, "template": {"spec": pod_spec}}}


async def run_job_row(row: Row, cluster: Cluster) -> tuple[list[Sample], dict[str, Any]]:
    cluster.kubectl("create", "namespace", JOB_NAMESPACE)
    names = [f"w{i}" for i in range(1, WORKLOADS + 1)]
    manifests = {"apiVersion": "v1", "kind": "List", "items": [job_manifest(n, row) for n in names]}
    deadline = time.monotonic() + 60
    while True:  # the namespace's default service account appears a moment after the namespace
        try:
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifests))
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    first = await wait_placed(cluster, JOB_LABEL, names, what=row.key)
    say(f"{row.key}: {WORKLOADS} Jobs Running on {', '.join(sorted(str(p.node) for p in first.values()))}; "
        f"killing in {SETTLE_S:.0f}s")
    await asyncio.sleep(SETTLE_S)
    samples = await kill_and_measure(cluster, row, JOB_LABEL, first)
    return samples, {}


class HeartbeatLog:
    """Latest heartbeat per (job id, attempt) on ``jobq.attempt.*.*.hb``, stamped on arrival."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, int], float] = {}

    async def on_msg(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        with contextlib.suppress(ValueError, IndexError):
            self.last[(parts[2], int(parts[3]))] = time.time()

    def beating(self, job_ids: list[str], within: float = 3.0) -> int:
        now = time.time()
        fresh = {j for (j, _), t in self.last.items() if now - t < within}
        return sum(1 for j in job_ids if j in fresh)


async def run_jobq_row(row: Row, cluster: Cluster, work: Path) -> tuple[list[Sample], dict[str, Any]]:
    env = {"JOBQ_BACKEND": "kubernetes", "JOBQ_KUBECONFIG": str(cluster.plane.kubeconfig),
           "JOBQ_NAMESPACE": JOBQ_NAMESPACE}
    config = StackConfig(data_dir=work / f"{row.key}-stack", nodes=0, nats_port=-1, http_port=0, env=env)
    stack = Stack(config, progress=lambda line: say(f"{row.key}: stack: {line}"))
    try:
        await stack.start()
        async with JobqClient(stack.nats_url, nats_options=stack.nats_options()) as client:
            beats = HeartbeatLog()
            await client.nc.subscribe("jobq.attempt.*.*.hb", cb=beats.on_msg)
            handles = [await client.submit(task="demo.sleep",
                                           args={"seconds": WORKLOAD_SECONDS, "progress_steps": 60},
                                           resources={"cpu": WORKLOAD_CPU, "memory": WORKLOAD_MEMORY})
                       for _ in range(WORKLOADS)]
            ids = [h.id for h in handles]
            first = await wait_placed(cluster, JOBQ_LABEL, ids, what=row.key)
            bystanders: list[str] = []
            if row.bystanders:
                busy = {p.node for p in first.values()}
                for _ in range(NODE_COUNT - WORKLOADS):
                    handle = await client.submit(task="demo.sleep",
                                                 args={"seconds": WORKLOAD_SECONDS, "progress_steps": 60},
                                                 resources={"cpu": BYSTANDER_CPU, "memory": "128Mi"})
                    bystanders.append(handle.id)
                placed = await wait_placed(cluster, JOBQ_LABEL, bystanders, what=f"{row.key} bystanders",
                                           distinct=False)
                on = sorted(str(p.node) for p in placed.values())
                say(f"{row.key}: bystanders Running on {', '.join(on)}"
                    f"{' (some on workload nodes)' if busy & set(on) else ''}")
            deadline = time.monotonic() + 90
            everyone = ids + bystanders
            while beats.beating(everyone) < len(everyone):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{row.key}: only {beats.beating(everyone)}/{len(everyone)} "
                                       "attempts heartbeating")
                await asyncio.sleep(0.2)
            say(f"{row.key}: {WORKLOADS} jobq jobs Running and heartbeating on "
                f"{', '.join(sorted(str(p.node) for p in first.values()))}; killing in {SETTLE_S:.0f}s")
            await asyncio.sleep(SETTLE_S)
            samples = await kill_and_measure(
                cluster, row, JOBQ_LABEL, first,
                lambda: f"; jobq attempts heartbeating {beats.beating(everyone)}/{len(everyone)}")
            await asyncio.sleep(2)  # the dispatcher records the replacement's start a moment later
            for sample in samples:
                record = await client.get(sample.workload)
                if record is None:
                    continue
                lost = record.attempts[0] if record.attempts else None
                new = record.attempts[1] if len(record.attempts) > 1 else None
                sample.jobq = {
                    "attempts": len(record.attempts),
                    "lost_reason": lost.reason.value if lost and lost.reason else None,
                    "lost_message": lost.message if lost else None,
                    "lost_finished_s": rel(lost.finished_at.timestamp(), sample.killed_at)
                    if lost and lost.finished_at else None,
                    "replacement_started_s": rel(new.started_at.timestamp(), sample.killed_at)
                    if new and new.started_at else None,
                }
            moved = 0
            for job_id in bystanders:
                record = await client.get(job_id)
                moved += record is not None and len(record.attempts) > 1
            extra = {"bystanders": len(bystanders), "bystanders_moved": moved}
            for job_id in everyone:
                with contextlib.suppress(Exception):
                    await client.cancel(job_id)
            return samples, extra
    finally:
        await stack.stop()


async def run_row(row: Row, work: Path) -> dict[str, Any]:
    say(f"=== {row.key}: {row.title} ({row.settings})")
    started = time.monotonic()
    cluster = Cluster(row.plane, work / row.key)
    try:
        cluster.start()
        load_before = os.getloadavg()
        if row.kind == "job":
            samples, extra = await run_job_row(row, cluster)
        else:
            samples, extra = await run_jobq_row(row, cluster, work)
        victims = {s.node for s in samples}
        spurious = false_not_ready(cluster, victims)
        if spurious:
            say(f"{row.key}: WARNING nodes went NotReady without being killed: {sorted(spurious)}")
        recovered = [s.recovery_s for s in samples if s.recovery_s is not None]
        result = {
            "row": row.key, "title": row.title, "settings": row.settings,
            "kills": len(victims), "workloads": len(samples), "recovered": len(recovered),
            "detours": sum(s.detours for s in samples),
            "p50_s": round(percentile50(recovered), 1) if recovered else None,
            "max_s": round(max(recovered), 1) if recovered else None,
            "samples": [dataclasses.asdict(s) for s in samples],
            "spurious_not_ready": spurious, "watch_errors": cluster.watch.errors if cluster.watch else 0,
            "loadavg_before_kill": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "row_seconds": round(time.monotonic() - started, 1), **extra,
        }
        say(f"{row.key}: {len(recovered)}/{len(samples)} replaced; p50 {result['p50_s']}s, "
            f"max {result['max_s']}s (row took {result['row_seconds']:.0f}s)")
        return result
    finally:
        say(f"{row.key}: stopping the cluster")
        cluster.stop()


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def markdown(results: list[dict[str, Any]], total_s: float) -> str:
    lines = ["| row | kills | p50 (s) | max (s) | replacements bound to a dead node | settings |",
             "|---|---:|---:|---:|---:|---|"]
    for r in results:
        missing = r["workloads"] - r["recovered"]
        kills = f"{r['kills']}" + (f" ({missing} not replaced)" if missing else "")
        lines.append(f"| {r['title']} | {kills} | {fmt(r['p50_s'])} | {fmt(r['max_s'])} | {r['detours']} "
                     f"| {r['settings']} |")
    lines.append("")
    lines.append(f"Seconds from the SIGKILL of a machine (kubelet + pods) until a replacement pod of the "
                 f"same workload was seen Running (API watch) on another node; {NODE_COUNT} nodes × "
                 f"{NODE_CPU:g} CPU, {WORKLOADS} workloads × {WORKLOAD_CPU:g} CPU, all {WORKLOADS} busy "
                 f"nodes killed at once, {KUBELET_CADENCE}; one run, total {total_s / 60:.1f} min.")
    return "\n".join(lines)


async def main_async(keys: list[str], work: Path) -> list[dict[str, Any]]:
    return [await run_row(ROWS[key], work) for key in keys]


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (and SIGHUP) as Ctrl-C: unwind, so every ``finally`` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join((__doc__ or "").split("\n")[1:]))
    parser.add_argument("--only", choices=list(ROWS), action="append", metavar="ROW",
                        help=f"run only this row (repeatable): {', '.join(ROWS)}")
    parser.add_argument("--json", action="store_true",
                        help="print the results (every sample) as JSON on stdout; the table goes to stderr")
    parser.add_argument("--keep", action="store_true", help="keep the state directories (logs) afterwards")
    args = parser.parse_args()
    keys = [k for k in ROWS if k in (args.only or ROWS)]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ensure_binaries(progress=say)
    work = Path(tempfile.mkdtemp(prefix="jobq-bench-"))
    started = time.monotonic()
    ok = False
    try:
        results = asyncio.run(main_async(keys, work))
        ok = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; everything was stopped")
        sys.exit(130)
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"state and logs kept in {work}")
    total = time.monotonic() - started
    table = markdown(results, total)
    if args.json:  # the table still goes to stderr, after the progress lines
        print(table, file=sys.stderr)
        document = {"rows": results, "total_s": round(total, 1), "command": " ".join(sys.argv)}
        print(json.dumps(document, indent=2))
    else:
        print(table)


if __name__ == "__main__":
    main()
