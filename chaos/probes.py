"""Chaos Toolkit probes: what the system recorded, read back from NATS and the dispatchers.

Probes that judge the outcome first wait (with their own deadline) for the burst to finish, so a
steady-state check after the method sees the end state rather than work still in flight.

Exactly-once is judged by the independent checker (``tests/checker.py``, loaded by
``target.load_checker``) from evidence the dispatcher does not produce: the burst's publish acks,
the execution ledger its ``demo.witness`` attempts write, result keys, artifacts as readers get
them, job records and events (:func:`exactly_once_defects`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from broker import contract
from broker.readmodel import recovery
from chaos import target
from chaos.target import Configuration, RunState
from chaos.training import (
    resumed_from_newest_checkpoint,
    training_succeeded,
    training_work_lost,
    work_lost_within_bound,
)
from submitter.client import JobqClient

__all__ = [
    "burst_succeeded",
    "dispatcher_healthy",
    "exactly_once_defects",
    "jobs_by_state",
    "new_run_id",
    "nodes_ready",
    "recovery_seconds",
    "resumed_from_newest_checkpoint",
    "retries_by_reason",
    "stale_pods_left",
    "training_succeeded",
    "training_work_lost",
    "within_slo",
    "work_lost_within_bound",
]

UNRECOVERED_S = 9999.0
"""Recovery time reported for a disruption the system never recovered from."""
NODE_KINDS = ("node_kill", "partition")


def new_run_id() -> str:
    """A fresh run id; use as dynamic configuration: {"type": "probe", ... "func": "new_run_id"}."""
    return target.new_run_id()


def _ids(configuration: Configuration) -> list[str]:
    return RunState.load(configuration).burst


def jobs_by_state(configuration: Configuration = None) -> dict[str, int]:
    """The burst's jobs counted by phase (``missing``: no record at all)."""
    ids = _ids(configuration)

    async def go(client: JobqClient) -> dict[str, int]:
        records = await target.burst_records(client, ids)
        counts = Counter(r.phase.value if r else "missing" for r in records.values())
        return {"total": len(ids), **dict(sorted(counts.items()))}

    return target.run_async(lambda: target.with_client(configuration, go))


def burst_succeeded(timeout_s: float = 120.0, configuration: Configuration = None) -> bool:
    """True when every job of the burst ended ``succeeded`` (waits up to ``timeout_s`` for the end).
    Before a burst is submitted there is nothing to fail, so it is true."""
    return target.all_succeeded(_ids(configuration), timeout_s=timeout_s, configuration=configuration)


def exactly_once_defects(timeout_s: float = 120.0, configuration: Configuration = None) -> int:
    """Defects the independent checker finds in the burst (tolerance 0): jobs lost (acked but not
    succeeded), duplicated (more than one accepted result), unproven (an accepted result no ledger
    line of that attempt's pod vouches for) or stale-visible (readers get another token than the
    accepted attempt's). Waits up to ``timeout_s`` for the burst to end. Its figures (and
    ``stale_writes``: superseded attempts that finished and wrote anyway) go to the run state and
    the report. Before a burst is submitted there is nothing to judge: 0."""
    state = RunState.load(configuration)
    if not state.burst:
        return 0
    checker = target.load_checker()
    wait_s = 0.5 if state.gave_up_waiting_at else timeout_s

    async def go(client: JobqClient) -> Any:
        return await checker.check(
            client, acked=state.acked, ledger=Path(state.ledger or target.ledger_path(configuration)),
            timeout_s=wait_s,
        )

    report = target.run_async(lambda: target.with_client(configuration, go))
    summary: dict[str, int] = {str(k): int(v) for k, v in report.summary().items()}
    unacked = len(state.burst) - len(state.acked)  # a publish the system never acknowledged
    if unacked:
        summary["unacked"] = unacked
    flagged: dict[str, list[str]] = {name: list(getattr(report, name)) for name in checker.FINDINGS}
    named = sorted({job_id for ids in flagged.values() for job_id in ids})[:50]
    latest = RunState.load(configuration)
    latest.checks.append({
        "at": target.now_iso(),
        "summary": summary,
        "flagged": flagged,
        "details": {job_id: list(report.details.get(job_id, [])) for job_id in named},
        "notes": [str(n) for n in report.notes[:20]],
    })
    if flagged["lost"] and not latest.gave_up_waiting_at:
        latest.gave_up_waiting_at = target.now_iso()  # later probes do not wait again
    latest.save(configuration)
    target.log.info("chaos_exactly_once", run_id=state.run_id, **summary, flagged=flagged)
    return summary["defects"] + unacked


def retries_by_reason(configuration: Configuration = None) -> dict[str, int]:
    """Retries of the burst's jobs by failure reason (node_lost, app_error, ...)."""
    ids = _ids(configuration)

    async def go(client: JobqClient) -> dict[str, int]:
        retries: Counter[str] = Counter()
        for record in (await target.burst_records(client, ids)).values():
            if record is not None:
                retries.update(record.retries)
        return dict(sorted(retries.items()))

    return target.run_async(lambda: target.with_client(configuration, go))


def _from_attempt_alive_at(
    record: contract.JobRecord, node: str, at: dt.datetime
) -> contract.JobRecord | None:
    """The record with its history cut to start at the attempt that was on ``node`` at ``at``, so
    that a node disrupted twice in one run is measured per disruption."""
    for i, attempt in enumerate(record.attempts):
        if (
            attempt.node == node
            and attempt.created_at <= at
            and (attempt.finished_at is None or attempt.finished_at >= at)
        ):
            return record.model_copy(update={"attempts": record.attempts[i:]})
    return None


def recoveries(records: list[contract.JobRecord], disruptions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recovery per disruption. Node kills and partitions: from the disruption to the last
    affected job's replacement attempt running (readmodel.recovery.after_disruption). Dispatcher and broker
    kills: from the kill to the takeover the action observed (new lease holder, stream leaders)."""
    found = []
    for d in disruptions:
        at = target.parse_time(d["at"])
        entry: dict[str, Any] = {"kind": d["kind"], "target": d["target"], "at": d["at"]}
        if d["kind"] in NODE_KINDS:
            hit = [r for r in (_from_attempt_alive_at(r, d["target"], at) for r in records) if r is not None]
            seconds = recovery.after_disruption(hit, node=d["target"], killed_at=at)
            entry["affected_jobs"] = len(seconds)
            entry["seconds"] = round(max(seconds), 2) if seconds else 0.0
        elif d.get("recovered_at"):
            entry["seconds"] = round((target.parse_time(d["recovered_at"]) - at).total_seconds(), 2)
        else:
            entry["seconds"] = UNRECOVERED_S
        found.append(entry)
    return found


def recovery_seconds(which: str = "max", configuration: Configuration = None) -> float:
    """Recovery time in seconds of the run's disruptions: ``max`` over all of them or the ``last``
    one; 0 before any disruption, 9999 for one the system did not recover from."""
    state = RunState.load(configuration)

    async def go(client: JobqClient) -> float:
        records = [r for r in (await target.burst_records(client, state.burst)).values() if r is not None]
        found = recoveries(records, state.disruptions)
        if not found:
            return 0.0
        values = [f["seconds"] for f in found]
        target.log.info("chaos_recovery", run_id=state.run_id, recoveries=found)
        return float(values[-1] if which == "last" else max(values))

    return target.run_async(lambda: target.with_client(configuration, go))


def within_slo(value: float = UNRECOVERED_S, slo_s: float = 10.0) -> bool:
    """Probe tolerance: Chaos Toolkit injects the measured recovery time as ``value``."""
    return 0 <= float(value) <= float(slo_s)


async def _dispatcher_views(configuration: Configuration, client: JobqClient) -> list[dict[str, Any]]:
    state = (await target.control(client.nc, "state"))["state"]
    ports = state.get("http_ports") or {}
    urls = [f"http://127.0.0.1:{port}/" for port in ports.values()] or [str(state.get("http_url"))]
    views = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for url in urls:
            view: dict[str, Any] = {"url": url, "healthy": False, "leader": False}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(f"{url}healthz") as r:
                    view["healthy"] = r.status == 200
                async with http.get(f"{url}readyz") as r:
                    body = await r.json()
                    view["leader"] = bool(body.get("leader")) and r.status == 200
            views.append(view)
    return views


def dispatcher_healthy(timeout_s: float = 30.0, configuration: Configuration = None) -> bool:
    """True once a dispatcher answers /healthz and exactly one of them leads and is ready."""

    async def go(client: JobqClient) -> bool:
        views: list[dict[str, Any]] = []

        async def ok() -> bool:
            nonlocal views
            views = await _dispatcher_views(configuration, client)
            return any(v["healthy"] for v in views) and sum(v["leader"] for v in views) == 1

        healthy = await target.poll(ok, timeout_s=timeout_s, interval_s=0.5)
        target.log.info("chaos_dispatchers", healthy=healthy, views=views)
        return healthy

    return target.run_async(lambda: target.with_client(configuration, go))


def nodes_ready(expected: int = 3, timeout_s: float = 30.0, configuration: Configuration = None) -> int:
    """Nodes heartbeating now; waits up to ``timeout_s`` for ``expected`` of them."""

    async def go(client: JobqClient) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = await target.node_statuses(client.nc, window_s=1.5)
            if len(seen) >= expected or time.monotonic() > deadline:
                return len(seen)
            await asyncio.sleep(0.2)

    return target.run_async(lambda: target.with_client(configuration, go))


def stale_pods_left(timeout_s: float = 30.0, configuration: Configuration = None) -> int:
    """After a partition heals: pods of superseded attempts still on their node ``timeout_s``
    later, as the node itself reports them (its heartbeat). Zero means every stale pod was killed.
    (Whether a stale attempt's output was accepted or is visible is the checker's part:
    :func:`exactly_once_defects`.)"""
    state = RunState.load(configuration)
    partitions = [d for d in state.disruptions if d["kind"] == "partition"]

    async def go(client: JobqClient) -> int:
        records = await target.burst_records(client, state.burst)
        stale: dict[str, set[str]] = {}
        for d in partitions:
            for pod in d.get("pods", []):
                job_id, _, attempt = pod.rpartition("#")
                record = records.get(job_id)
                if record is None or len(record.attempts) <= int(attempt):
                    continue  # the attempt was not superseded: nothing to fence
                stale.setdefault(d["target"], set()).add(pod)
        leftovers: set[str] = set()

        async def pods_gone() -> bool:
            leftovers.clear()
            statuses = await target.node_statuses(client.nc, window_s=1.2)
            for node, pods in stale.items():
                status = statuses.get(node)
                on_node = {f"{p.job_id}#{p.attempt}" for p in (status.pods if status else ())}
                leftovers.update(pods & on_node)
            return not leftovers

        if stale:
            await target.poll(pods_gone, timeout_s=timeout_s, interval_s=0.3)
        target.log.info(
            "chaos_fencing", stale=sorted(p for s in stale.values() for p in s), pods_left=sorted(leftovers)
        )
        return len(leftovers)

    return target.run_async(lambda: target.with_client(configuration, go))
