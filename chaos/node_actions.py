"""Chaos actions against node agents: kill them (SIGKILL: their pods die with them), partition
one (SIGSTOP, later SIGCONT), kill them in turn while work goes on, and start them again.

Node agents are found from their own heartbeats (``contract.NodeStatus`` carries the pid);
restarts ask the stack supervisor on ``contract.CONTROL_SUBJECT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from typing import Any

from chaoslib.exceptions import ActivityFailed

from broker import contract
from chaos import activity, burst, target
from chaos.target import ChaosError, Configuration, RunState
from submitter.client import JobqClient

__all__ = ["kill_nodes", "partition_node", "restart_nodes", "rolling_node_kill"]


def _kill(configuration: Configuration, status: contract.NodeStatus) -> tuple[int, dict[str, Any]]:
    """SIGKILL the node agent of ``status`` (its pods die with it); see ``activity.kill``."""
    if status.pid is None:
        raise ChaosError(f"node {status.name} does not report its pid")
    return activity.kill(configuration, status.pid, kind="node_kill", victim=status.name,
                         pods=[f"{p.job_id}#{p.attempt}" for p in status.pods])


def kill_nodes(
    count: int = 1,
    names: str | list[str] | None = None,
    pick: str = "busiest",
    min_running: int = 3,
    timeout_s: float = 60.0,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """SIGKILL ``count`` node agents (their pods die with them) once ``min_running`` burst jobs run
    (jobs whose task has begun, per the burst's ledger).

    ``pick``: ``busiest`` (most running burst jobs) or ``random``; ``names`` overrides both."""
    ids, ledger = burst.of_run(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        by_node = await burst.running_on_nodes(
            client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
        )
        statuses = await target.node_statuses(client.nc)
        victims = burst.choose_victims(
            sorted(statuses), by_node, count=count, names=burst.node_names(names), pick=pick
        )
        killed = []
        for name in victims:
            killed.append(_kill(configuration, statuses[name])[1])
        return {"killed": killed}

    return activity.on_stack(configuration, go)


async def _restart_node(client: JobqClient, name: str, *, timeout_s: float) -> str:
    await target.control(client.nc, "start_node", name=name)

    async def back() -> bool:
        return name in await target.node_statuses(client.nc, window_s=1.2)

    if not await target.poll(back, timeout_s=timeout_s, interval_s=0.1):
        raise ChaosError(f"node {name} restarted but sent no heartbeat within {timeout_s}s")
    return target.now_iso()


def restart_nodes(
    names: str | list[str] | None = None, timeout_s: float = 30.0, configuration: Configuration = None
) -> dict[str, Any]:
    """Start again the nodes killed in this run (or ``names``) that are not heartbeating."""
    state = RunState.load(configuration)
    wanted = burst.node_names(names) or sorted(
        {d["target"] for d in state.disruptions if d["kind"] == "node_kill"}
    )

    async def go(client: JobqClient) -> dict[str, Any]:
        alive = await target.node_statuses(client.nc)
        restarted = {}
        for name in wanted:
            if name not in alive:
                restarted[name] = await _restart_node(client, name, timeout_s=timeout_s)
        return {"restarted": restarted, "already_up": sorted(set(wanted) - set(restarted))}

    result = activity.on_stack(configuration, go)
    for i, d in enumerate(state.disruptions):
        if d["kind"] == "node_kill" and d["target"] in result["restarted"] and "restarted_at" not in d:
            target.update_disruption(configuration, i, restarted_at=result["restarted"][d["target"]])
    return result


def partition_node(
    duration_s: float = 8.0,
    name: str | None = None,
    min_running: int = 3,
    timeout_s: float = 60.0,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """SIGSTOP a node agent and its pods' process groups for ``duration_s``, then SIGCONT them:
    alive but silent, like a machine behind a network partition that later heals."""
    ids, ledger = burst.of_run(configuration)

    async def pick(client: JobqClient) -> contract.NodeStatus:
        by_node = await burst.running_on_nodes(
            client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
        )
        statuses = await target.node_statuses(client.nc)
        victim = burst.choose_victims(
            sorted(statuses), by_node, count=1, names=[name] if name else None, pick="busiest"
        )[0]
        return statuses[victim]

    status = activity.on_stack(configuration, pick)
    if status.pid is None:
        raise ActivityFailed(f"node {status.name} does not report its pid")
    pod_pids = [p.pid for p in status.pods if p.pid]
    at = target.now_iso()
    os.kill(status.pid, signal.SIGSTOP)
    for pid in pod_pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGSTOP)
    index = target.record_disruption(
        configuration,
        {
            "kind": "partition",
            "target": status.name,
            "pid": status.pid,
            "signal": "SIGSTOP",
            "at": at,
            "pods": [f"{p.job_id}#{p.attempt}" for p in status.pods],
            "duration_s": duration_s,
        },
    )
    try:
        time.sleep(duration_s)
    finally:
        for pid in pod_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, signal.SIGCONT)
        target.update_disruption(configuration, index, healed_at=target.now_iso())
    return {
        "partitioned": status.name,
        "pid": status.pid,
        "pods": len(pod_pids),
        "at": at,
        "duration_s": duration_s,
    }


def rolling_node_kill(
    kills: int = 3,
    interval_s: float = 4.0,
    restart: bool = True,
    min_running: int = 2,
    timeout_s: float = 60.0,
    top_up: int = 12,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """SIGKILL the busiest node every ``interval_s`` while work continues; with ``restart``, each
    killed node is started again just before the next kill, so capacity remains. Work does
    continue: when fewer than ``min_running`` jobs of the burst are left before a kill, another
    ``top_up`` jobs join the burst (the kills and restarts take as long as the machine makes them,
    a fixed burst may have drained by then)."""

    async def go(client: JobqClient) -> dict[str, Any]:
        rounds = []
        killed_count: Counter[str] = Counter()
        for _ in range(kills):
            ids, ledger = burst.of_run(configuration)
            if await burst.unfinished(client, ids) < min_running:
                await burst.add_to_burst(client, configuration, count=top_up, min_seconds=2, max_seconds=4)
                ids, ledger = burst.of_run(configuration)
            by_node = await burst.running_on_nodes(
                client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
            )
            statuses = await target.node_statuses(client.nc)
            alive = sorted(statuses)
            if len(alive) < 2:
                raise ChaosError(f"refusing to kill the last live node {alive}")
            # Spread the kills: nodes killed least often first, then the busiest.
            victim = min(alive, key=lambda n: (killed_count[n], -by_node[n], n))
            killed_count[victim] += 1
            index, disruption = _kill(configuration, statuses[victim])
            await asyncio.sleep(interval_s)
            entry = {"node": victim, "pid": disruption["pid"], "at": disruption["at"]}
            if restart:
                entry["restarted_at"] = await _restart_node(client, victim, timeout_s=30)
                target.update_disruption(configuration, index, restarted_at=entry["restarted_at"])
            rounds.append(entry)
        return {"kills": rounds}

    return activity.on_stack(configuration, go)
