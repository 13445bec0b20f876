"""`jobq demo`: the embedded stack plus a real ML workload, optionally with a node killed mid-run.

Everything the summary reports is read back from what the system recorded (job records and the
event stream), not from what the demo believes it did. ``submitted`` counts the jobs whose publish
JetStream acknowledged; ``lost`` counts those of them without a ``succeeded`` record at the end
(a wait that runs out does not stop the demo before counting: ``timed_out`` says it ran out);
``duplicate_results`` counts jobs for which more than one attempt was ever seen accepted (the
records' ``result_attempt`` as every update showed it, the final read, and the attempts named by
``succeeded`` events). The independent check of the same promise, from evidence the dispatcher
does not produce, is tests/checker.py (used by the tests and the chaos experiments).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from nats.aio.msg import Msg

from broker import contract
from broker.embedded.stack import Stack, StackConfig, StackError
from broker.readmodel import events as event_log
from broker.readmodel import recovery
from submitter import demo_training
from submitter.client import JobqClient, WaitTimeout

DATASETS = ("digits", "iris", "wine", "breast_cancer")
MODELS = ("logreg", "random_forest", "knn", "svc")


def workload(n: int, *, run_id: str) -> tuple[list[dict[str, Any]], int]:
    """``n`` job specs: training, evaluation and sweeps first, then batch predictions that use
    the first trained models. Returns the specs and how many of them are predictions."""
    predictions = max(1, n // 6)
    specs: list[dict[str, Any]] = []
    for i in range(n - predictions):
        dataset, model = DATASETS[i % len(DATASETS)], MODELS[(i // len(DATASETS)) % len(MODELS)]
        kind = ("sklearn.train", "sklearn.train", "sklearn.evaluate", "sklearn.sweep")[i % 4]
        args: dict[str, Any] = {"dataset": dataset, "model": model}
        specs.append({"id": f"{run_id}-{i:03d}", "task": kind, "args": args, "profile": "small",
                      "labels": {"demo": run_id}})
    trains = [s for s in specs if s["task"] == "sklearn.train"]
    for j in range(predictions):
        source = trains[j % len(trains)]
        specs.append({"id": f"{run_id}-p{j:02d}", "task": "sklearn.predict", "profile": "small",
                      "args": {"model_job": source["id"], "dataset": source["args"]["dataset"]},
                      "labels": {"demo": run_id}})
    return specs, predictions


def say(message: str) -> None:
    click.echo(f"jobq demo: {message}", err=True)


async def run_demo(*, jobs: int, nodes: int, node_cpu: float = 6.0, node_memory: str = "8Gi", kill_node: bool,
                   data_dir: Path | None, nats_url: str | None,
                   timeout_s: float, as_json: bool, backend: str = "local",
                   kubeconfig: Path | None = None) -> dict[str, Any]:
    started = time.monotonic()
    data_dir = data_dir or Path(".jobq/demo")
    if data_dir.exists() and nats_url is None:
        shutil.rmtree(data_dir)
    run_id = "d" + dt.datetime.now(dt.UTC).strftime("%H%M%S")
    k8s_env: dict[str, str] = {}
    if backend == "kubernetes":  # pods go to a Kubernetes cluster; no local node agents
        from devcluster import nodes as kubelets

        try:
            k8s_env = kubelets.stack_env(kubeconfig)
        except kubelets.NodeError as exc:
            raise click.ClickException(str(exc)) from None
        say(f"backend kubernetes: {k8s_env['JOBQ_KUBECONFIG']}")
    stack = Stack(StackConfig(data_dir=data_dir, nodes=0 if k8s_env else nodes, node_cpu=node_cpu,
                              node_memory=node_memory, nats_url=nats_url, nats_port=-1, http_port=0,
                              log_format="json", env=k8s_env), progress=say)
    try:
        await stack.start()
    except StackError as exc:
        await stack.stop()
        raise click.ClickException(str(exc)) from None
    say(f"stack up in {time.monotonic() - started:.1f}s; dashboard {stack.dashboard_url}")
    try:
        summary = await _drive(stack, jobs=jobs, kill_node=kill_node, timeout_s=timeout_s, run_id=run_id)
    finally:
        say("stopping the stack")
        await stack.stop()
    if k8s_env and summary.get("killed_node"):
        from devcluster import nodes as kubelets

        kubelets.restart_kubelet(Path(k8s_env["JOBQ_KUBECONFIG"]).parent, summary["killed_node"])
        say(f"restarted the kubelet agent of {summary['killed_node']}")
    summary["wall_seconds"] = round(time.monotonic() - started, 2)
    _print_summary(summary, as_json=as_json, logs=stack.logs)
    return summary


async def _drive(stack: Stack, *, jobs: int, kill_node: bool, timeout_s: float,
                 run_id: str) -> dict[str, Any]:
    specs, n_predict = workload(jobs - 1, run_id=run_id)  # and the long training job
    first, second = specs[:-n_predict], specs[-n_predict:]
    train = demo_training.spec(run_id)
    specs.append(train)
    counts: Counter[str] = Counter()
    phases: dict[str, str] = {}
    accepted: dict[str, set[int]] = {}
    acked: list[str] = []
    timed_out: list[str] = []
    killed: tuple[str, dt.datetime] | None = None
    t0 = time.monotonic()
    async with JobqClient(stack.nats_url, name="jobq-demo", nats_options=stack.nats_options()) as client:
        work_started = time.monotonic()

        async def submit(batch: list[dict[str, Any]]) -> list[str]:
            ids = []
            for spec in batch:
                await client.submit(spec)  # returns once JetStream acknowledged the publish
                ids.append(spec["id"])
            acked.extend(ids)
            return ids

        def seen(record: contract.JobRecord) -> None:
            phases[record.spec.id] = record.phase.value
            if record.result_attempt is not None:
                accepted.setdefault(record.spec.id, set()).add(record.result_attempt)

        async def wait(ids: list[str]) -> None:
            try:
                await client.wait(ids, timeout=timeout_s, on_update=seen)
            except WaitTimeout as exc:  # count what happened anyway: unfinished jobs are lost
                timed_out.extend(exc.pending)
                say(str(exc))

        async def report() -> None:
            while True:
                await asyncio.sleep(2)
                tally = Counter(phases.values())
                say(f"{sum(tally[p] for p in ('succeeded', 'dead', 'cancelled'))}/{len(specs)} finished "
                    f"(running {tally['running']}, queued {tally['queued']}, dead {tally['dead']}) "
                    f"after {time.monotonic() - t0:.0f}s")

        train_ids = await submit([train])
        say(f"submitted {train['id']}: {demo_training.EPOCHS} epochs of incremental training, "
            "a checkpoint after each")
        first_ids = await submit(first)
        say(f"submitted {len(first)} training/evaluation/sweep jobs")
        reporter = asyncio.create_task(report())
        try:
            waiter = asyncio.create_task(wait(first_ids))
            if kill_node:
                killed = await _kill_training_node(stack, client, train["id"])
            await waiter
            second_ids = await submit(second)
            say(f"submitted {len(second)} batch-prediction jobs using the trained models")
            await wait(second_ids)
            await wait(train_ids)
        finally:
            reporter.cancel()
        work_seconds = time.monotonic() - work_started
        records = {job_id: await client.get(job_id) for job_id in acked}
        for record in records.values():
            if record is not None:
                seen(record)
        events = await event_log.stored_events(client.js)
    summary = summarize(records, events, killed=killed, work_seconds=work_seconds, counts=counts,
                        accepted=accepted)
    summary["timed_out"] = len(timed_out)
    summary["training"] = demo_training.summarize(records.get(train["id"]), killed=killed)
    return summary


async def _kill_training_node(stack: Stack, client: JobqClient,
                              train_id: str) -> tuple[str, dt.datetime] | None:
    """Wait until jobs run and their runners heartbeat (as a long ML job's do) and the long
    training job has saved a few checkpoints (its live checkpoint), then SIGKILL the node it runs
    on, part-way through an epoch. (A node that dies before its attempts' first heartbeat is only
    told by its Lease, 40 s on Kubernetes: docs/design/node-loss.md.)"""
    beats: dict[str, float] = {}

    async def on_beat(msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            beats[contract.AttemptHeartbeat.model_validate_json(msg.data).job_id] = time.monotonic()

    sub = await client.nc.subscribe(contract.HEARTBEAT_WILDCARD, cb=on_beat)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = time.monotonic()
            running = [r for r in await client.list() if r.phase == contract.JobPhase.RUNNING
                       and r.current and r.current.state == contract.AttemptState.RUNNING and r.current.node
                       and now - beats.get(r.spec.id, -1e9) < 2]
            train = next((r for r in running if r.spec.id == train_id), None)
            status = await client.status(train_id) if train is not None else None
            wait_s = demo_training.kill_in(status.checkpoint if status else None, contract.utcnow())
            if train is not None and train.current and wait_s is not None:
                await asyncio.sleep(wait_s)
                by_node = Counter(r.current.node for r in running if r.current)
                node = train.current.node
                epochs = status.checkpoint.step if status and status.checkpoint else None
                assert node is not None
                at = contract.utcnow()
                stack.signal_node(node, signal.SIGKILL)
                say(f"SIGKILLed node {node} with {by_node[node]} running attempt(s), among them "
                    f"{train_id} after {epochs} epoch(s)")
                return node, at
            await asyncio.sleep(0.2)
    finally:
        await sub.unsubscribe()
    say(f"{train_id} did not run {demo_training.KILL_AFTER_EPOCHS} epochs; the node kill was skipped")
    return None


def summarize(records: dict[str, contract.JobRecord | None], events: list[contract.JobEvent], *,
              killed: tuple[str, dt.datetime] | None, work_seconds: float,
              counts: Counter[str] | None = None,
              accepted: dict[str, set[int]] | None = None) -> dict[str, Any]:
    """The figures of a run. ``records``: every job whose submission was acknowledged (None: it has
    no record). ``accepted``: every ``result_attempt`` seen per job while it ran; added to the
    final records' and the attempts named by ``succeeded`` events, a job with more than one
    distinct accepted attempt is a duplicate result."""
    done = [r for r in records.values() if r is not None and r.phase.is_terminal]
    by_phase = Counter(r.phase.value for r in done)
    succeeded = {job_id for job_id, r in records.items()
                 if r is not None and r.phase == contract.JobPhase.SUCCEEDED and r.result_attempt is not None}
    attempts_accepted: dict[str, set[int]] = {job_id: set(seen) for job_id, seen in (accepted or {}).items()}
    for job_id, r in records.items():
        if r is not None and r.result_attempt is not None:
            attempts_accepted.setdefault(job_id, set()).add(r.result_attempt)
    for e in events:
        if e.type == contract.EventType.SUCCEEDED and e.job_id in records and e.attempt is not None:
            attempts_accepted.setdefault(e.job_id, set()).add(e.attempt)
    retries: Counter[str] = Counter()
    for r in done:
        retries.update(r.retries)
    summary: dict[str, Any] = {
        "submitted": len(records),
        "succeeded": by_phase["succeeded"],
        "failed": by_phase["dead"] + by_phase["cancelled"],
        "dead": by_phase["dead"],
        "cancelled": by_phase["cancelled"],
        "lost": len(records) - len(succeeded),
        "duplicate_results": sum(1 for seen in attempts_accepted.values() if len(seen) > 1),
        "retries": dict(sorted(retries.items())),
        "work_seconds": round(work_seconds, 2),
        "jobs_per_second": round(len(done) / work_seconds, 2) if work_seconds else 0.0,
        "attempts": {job_id: len(r.attempts) for job_id, r in records.items() if r is not None},
    }
    if killed is not None:
        node, at = killed
        recoveries = recovery.after_disruption(done, node=node, killed_at=at)
        summary["killed_node"] = node
        summary["affected_jobs"] = len(recoveries)
        summary["recovery_seconds"] = ({"max": round(max(recoveries), 2),
                                        "p50": round(statistics.median(recoveries), 2),
                                        "samples": sorted(round(r, 3) for r in recoveries)}
                                       if recoveries else {"max": None, "p50": None, "samples": []})
    return summary


def _print_summary(summary: dict[str, Any], *, as_json: bool, logs: Path) -> None:
    out = sys.stderr if as_json else sys.stdout
    lines = [
        "",
        f"jobs        submitted {summary['submitted']}  succeeded {summary['succeeded']}  "
        f"failed {summary['failed']}  dead {summary['dead']}  lost {summary['lost']}  "
        f"duplicate results {summary['duplicate_results']}"
        + (f"  (wait ran out for {summary['timed_out']})" if summary.get("timed_out") else ""),
        f"retries     {', '.join(f'{k}={v}' for k, v in summary['retries'].items()) or 'none'}",
        f"time        {summary['wall_seconds']}s wall, {summary['work_seconds']}s of work, "
        f"{summary['jobs_per_second']} jobs/s",
    ]
    if "killed_node" in summary:
        rec = summary["recovery_seconds"]
        lines.append(f"node kill   {summary['killed_node']}: {summary['affected_jobs']} job(s) moved, "
                     f"recovery p50 {rec['p50']}s max {rec['max']}s (kill -> replacement running)")
    train_line = demo_training.line(summary.get("training") or {})
    if train_line:
        lines.append(f"checkpoint  {train_line}")
    multi = {k: v for k, v in summary["attempts"].items() if v > 1}
    lines.append(f"attempts    {len(summary['attempts']) - len(multi)} job(s) in one attempt"
                 + (f"; more: {', '.join(f'{k}={v}' for k, v in sorted(multi.items()))}" if multi else ""))
    lines.append(f"logs        {logs}/")
    click.echo("\n".join(lines), file=out)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    with contextlib.suppress(Exception):
        out.flush()
