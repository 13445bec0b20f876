"""Chaos Toolkit probes: what the system recorded, read back from NATS and the dispatchers.

Probes that judge the outcome first wait (with their own deadline) for the burst to finish, so a
steady-state check after the method sees the end state rather than work still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter
from typing import Any

import aiohttp

from broker import contract
from broker.embedded import demo
from chaos import target
from chaos.target import Configuration, RunState
from submitter.client import JobqClient

__all__ = [
    "burst_succeeded",
    "dispatcher_healthy",
    "duplicate_results",
    "jobs_by_state",
    "lost_jobs",
    "new_run_id",
    "nodes_ready",
    "recovery_seconds",
    "retries_by_reason",
    "unfenced_stale_attempts",
    "within_slo",
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
    ids = _ids(configuration)

    async def go(client: JobqClient) -> bool:
        await target.wait_terminal(client, ids, timeout_s=timeout_s, configuration=configuration)
        records = await target.burst_records(client, ids)
        return all(r is not None and r.phase == contract.JobPhase.SUCCEEDED for r in records.values())

    return target.run_async(lambda: target.with_client(configuration, go))


def lost_jobs(timeout_s: float = 120.0, configuration: Configuration = None) -> int:
    """Jobs of the burst that never finished (no terminal record ``timeout_s`` after asking)."""
    ids = _ids(configuration)

    async def go(client: JobqClient) -> int:
        await target.wait_terminal(client, ids, timeout_s=timeout_s, configuration=configuration)
        records = await target.burst_records(client, ids)
        return sum(1 for r in records.values() if r is None or not r.phase.is_terminal)

    return target.run_async(lambda: target.with_client(configuration, go))


def duplicate_results(configuration: Configuration = None) -> int:
    """Jobs of the burst with more than one accepted result (more than one ``succeeded`` event)."""
    ids = _ids(configuration)

    async def go(client: JobqClient) -> int:
        counts = [await target.count_events(client, i, contract.EventType.SUCCEEDED) for i in ids]
        return sum(1 for n in counts if n > 1)

    return target.run_async(lambda: target.with_client(configuration, go))


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
    affected job's replacement attempt running (demo.recovery_seconds). Dispatcher and broker
    kills: from the kill to the takeover the action observed (new lease holder, stream leaders)."""
    found = []
    for d in disruptions:
        at = target.parse_time(d["at"])
        entry: dict[str, Any] = {"kind": d["kind"], "target": d["target"], "at": d["at"]}
        if d["kind"] in NODE_KINDS:
            hit = [r for r in (_from_attempt_alive_at(r, d["target"], at) for r in records) if r is not None]
            seconds = demo.recovery_seconds(hit, node=d["target"], killed_at=at)
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


def unfenced_stale_attempts(timeout_s: float = 30.0, configuration: Configuration = None) -> int:
    """After a partition heals: superseded attempts whose result was accepted, or whose pod is
    still on the node ``timeout_s`` later. Zero means every stale attempt was fenced."""
    state = RunState.load(configuration)
    partitions = [d for d in state.disruptions if d["kind"] == "partition"]

    async def go(client: JobqClient) -> int:
        records = await target.burst_records(client, state.burst)
        stale: dict[str, set[str]] = {}
        bad = 0
        for d in partitions:
            for pod in d.get("pods", []):
                job_id, _, attempt = pod.rpartition("#")
                record = records.get(job_id)
                if record is None or len(record.attempts) <= int(attempt):
                    continue  # the attempt was not superseded: nothing to fence
                stale.setdefault(d["target"], set()).add(pod)
                if record.result_attempt == int(attempt):
                    bad += 1
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
            "chaos_fencing",
            stale=sorted(p for s in stale.values() for p in s),
            accepted_stale=bad,
            pods_left=sorted(leftovers),
        )
        return bad + len(leftovers)

    return target.run_async(lambda: target.with_client(configuration, go))
