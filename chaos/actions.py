"""Chaos Toolkit actions against a jobq stack: real signals to real processes.

Kills are SIGKILLs of the actual OS processes (node agents, the leading dispatcher, a nats-server),
found from their own heartbeats, the leader lease or the stack's state; restarts ask the stack
supervisor. Every disruption is written to the run's state file (see chaos.target) so probes and
the report can say what was hit and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from typing import Any

from chaoslib.exceptions import ActivityFailed

from broker import contract
from broker.dispatcher.lease import LEASE_KEY
from chaos import target
from chaos.target import ChaosError, Configuration, RunState
from submitter.client import JobqClient

__all__ = [
    "kill_dispatcher_leader",
    "kill_nats_server",
    "kill_nodes",
    "partition_node",
    "restart_dispatchers",
    "restart_nats_servers",
    "restart_nodes",
    "rolling_node_kill",
    "submit_burst",
    "wait_for_drain",
]

JOBQ_STREAMS = (
    contract.STREAM_SUBMIT,
    contract.STREAM_EVENTS,
    contract.STREAM_DEAD,
    contract.STREAM_ADVISORIES,
    f"KV_{contract.BUCKET_JOBS}",
    f"KV_{contract.BUCKET_RESULTS}",
    f"KV_{contract.BUCKET_LEADER}",
    f"KV_{contract.BUCKET_IDEMPOTENCY}",
)


def _fail(exc: Exception) -> ActivityFailed:
    return ActivityFailed(str(exc))


def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie waiting to be reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# --- work ---------------------------------------------------------------------------------


def submit_burst(
    count: int = 12,
    min_seconds: float = 1.0,
    max_seconds: float = 3.0,
    queue: str = "default",
    configuration: Configuration = None,
) -> dict[str, Any]:
    """Submit ``count`` demo.witness jobs of ``min_seconds``..``max_seconds``, labelled with the run
    id. Each attempt logs its start and end (with the token it wrote) to the run's ledger; the
    publish acks are kept in the run state: the exactly-once checker's evidence."""
    run_id = target.run_id(configuration)
    checker = target.load_checker()
    state = RunState.load(configuration)
    ledger = target.ledger_path(configuration)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    durations = [round(min_seconds + (max_seconds - min_seconds) * step / 4, 2) for step in range(5)]
    specs = checker.witness_specs(
        count, ledger, seconds=durations, prefix=run_id, start=len(state.burst), queue=queue,
        labels={target.BURST_LABEL: run_id},
    )

    async def go(client: JobqClient) -> dict[str, int]:
        acked: dict[str, int] = await checker.submit_witnessed(client, specs)
        return acked

    acked = target.run_async(lambda: target.with_client(configuration, go))
    state.burst.extend(s.id for s in specs)
    state.acked.update(acked)
    state.ledger = str(ledger)
    state.submitted_at = state.submitted_at or target.now_iso()
    state.save(configuration)
    target.log.info("chaos_burst_submitted", run_id=run_id, jobs=count, ledger=str(ledger))
    return {"run_id": run_id, "submitted": count, "acked": len(acked), "first": specs[0].id,
            "last": specs[-1].id}


def wait_for_drain(timeout_s: float = 120.0, configuration: Configuration = None) -> dict[str, int]:
    """Wait until every job of the burst has finished (any terminal phase)."""
    ids = RunState.load(configuration).burst

    async def go(client: JobqClient) -> dict[str, int]:
        if not await target.wait_terminal(client, ids, timeout_s=timeout_s, configuration=configuration):
            raise ActivityFailed(f"the burst did not drain within {timeout_s}s")
        records = await target.burst_records(client, ids)
        return dict(Counter(r.phase.value if r else "missing" for r in records.values()))

    return target.run_async(lambda: target.with_client(configuration, go))


def _burst(configuration: Configuration) -> tuple[list[str], str | None]:
    state = RunState.load(configuration)
    return state.burst, state.ledger


def started_attempts(ledger: str | None) -> set[tuple[str, int]]:
    """(job, attempt) pairs whose task has begun, per the burst's ledger (their own ``start``
    lines); unreadable lines are skipped."""
    found: set[tuple[str, int]] = set()
    if not ledger:
        return found
    with contextlib.suppress(OSError), open(ledger, encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                if entry["event"] == "start":
                    found.add((str(entry["job_id"]), int(entry["attempt"])))
    return found


async def _running_on_nodes(
    client: JobqClient, ids: list[str], *, at_least: int, timeout_s: float, ledger: str | None = None
) -> Counter[str]:
    """Wait until ``at_least`` jobs of the burst run; return running attempts per node. With the
    burst's ``ledger``, an attempt counts once its task has begun (its ledger ``start`` line), not
    merely its pod: a disruption then hits tasks mid-way, whose stale attempts can go on to write."""
    by_node: Counter[str] = Counter()
    want = min(at_least, len(ids))

    async def enough() -> bool:
        by_node.clear()
        started = started_attempts(ledger) if ledger else set()
        for record in (await target.burst_records(client, ids)).values():
            current = record.current if record else None
            if current and current.state == contract.AttemptState.RUNNING and current.node:
                if ledger and record is not None and (record.spec.id, current.number) not in started:
                    continue
                by_node[current.node] += 1
        return sum(by_node.values()) >= want

    if not await target.poll(enough, timeout_s=timeout_s):
        raise ChaosError(f"only {sum(by_node.values())} of {want} burst jobs running after {timeout_s}s")
    return by_node


def _choose(
    alive: list[str], by_node: Counter[str], *, count: int, names: list[str] | None, pick: str
) -> list[str]:
    if names:
        missing = [n for n in names if n not in alive]
        if missing:
            raise ChaosError(f"node(s) {missing} are not heartbeating; alive: {alive}")
        return names
    if count >= len(alive):
        raise ChaosError(f"refusing to kill {count} of {len(alive)} live nodes: nothing would be left")
    if pick == "random":
        return random.sample(alive, count)
    return sorted(alive, key=lambda n: (-by_node[n], n))[:count]


def _names(names: str | list[str] | None) -> list[str] | None:
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()] or None
    return names or None


# --- nodes --------------------------------------------------------------------------------


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
    ids, ledger = _burst(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        by_node = await _running_on_nodes(
            client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
        )
        statuses = await target.node_statuses(client.nc)
        victims = _choose(sorted(statuses), by_node, count=count, names=_names(names), pick=pick)
        killed = []
        for name in victims:
            pid = statuses[name].pid
            if pid is None:
                raise ChaosError(f"node {name} does not report its pid")
            pods = [f"{p.job_id}#{p.attempt}" for p in statuses[name].pods]
            at = target.now_iso()
            os.kill(pid, signal.SIGKILL)
            disruption = {
                "kind": "node_kill",
                "target": name,
                "pid": pid,
                "signal": "SIGKILL",
                "at": at,
                "pods": pods,
            }
            target.record_disruption(configuration, disruption)
            killed.append(disruption)
        return {"killed": killed}

    try:
        return target.run_async(lambda: target.with_client(configuration, go))
    except ChaosError as exc:
        raise _fail(exc) from exc


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
    wanted = _names(names) or sorted({d["target"] for d in state.disruptions if d["kind"] == "node_kill"})

    async def go(client: JobqClient) -> dict[str, Any]:
        alive = await target.node_statuses(client.nc)
        restarted = {}
        for name in wanted:
            if name not in alive:
                restarted[name] = await _restart_node(client, name, timeout_s=timeout_s)
        return {"restarted": restarted, "already_up": sorted(set(wanted) - set(restarted))}

    try:
        result = target.run_async(lambda: target.with_client(configuration, go))
    except ChaosError as exc:
        raise _fail(exc) from exc
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
    ids, ledger = _burst(configuration)

    async def pick(client: JobqClient) -> contract.NodeStatus:
        by_node = await _running_on_nodes(
            client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
        )
        statuses = await target.node_statuses(client.nc)
        victim = _choose(sorted(statuses), by_node, count=1, names=[name] if name else None, pick="busiest")[
            0
        ]
        return statuses[victim]

    try:
        status = target.run_async(lambda: target.with_client(configuration, pick))
    except ChaosError as exc:
        raise _fail(exc) from exc
    if status.pid is None:
        raise ActivityFailed(f"node {status.name} does not report its pid")
    pod_pids = [p.pid for p in status.pods if p.pid]
    at = target.now_iso()
    os.kill(status.pid, signal.SIGSTOP)
    for pid in pod_pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGSTOP)
    target.record_disruption(
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
    index = len(RunState.load(configuration).disruptions) - 1
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
    configuration: Configuration = None,
) -> dict[str, Any]:
    """SIGKILL the busiest node every ``interval_s`` while work continues; with ``restart``, each
    killed node is started again just before the next kill, so capacity remains."""
    ids, ledger = _burst(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        rounds = []
        killed_count: Counter[str] = Counter()
        for _ in range(kills):
            by_node = await _running_on_nodes(
                client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
            )
            statuses = await target.node_statuses(client.nc)
            alive = sorted(statuses)
            if len(alive) < 2:
                raise ChaosError(f"refusing to kill the last live node {alive}")
            # Spread the kills: nodes killed least often first, then the busiest.
            victim = min(alive, key=lambda n: (killed_count[n], -by_node[n], n))
            killed_count[victim] += 1
            pid = statuses[victim].pid
            if pid is None:
                raise ChaosError(f"node {victim} does not report its pid")
            at = target.now_iso()
            os.kill(pid, signal.SIGKILL)
            target.record_disruption(
                configuration,
                {
                    "kind": "node_kill",
                    "target": victim,
                    "pid": pid,
                    "signal": "SIGKILL",
                    "at": at,
                    "pods": [f"{p.job_id}#{p.attempt}" for p in statuses[victim].pods],
                },
            )
            index = len(RunState.load(configuration).disruptions) - 1
            await asyncio.sleep(interval_s)
            entry = {"node": victim, "pid": pid, "at": at}
            if restart:
                entry["restarted_at"] = await _restart_node(client, victim, timeout_s=30)
                target.update_disruption(configuration, index, restarted_at=entry["restarted_at"])
            rounds.append(entry)
        return {"kills": rounds}

    try:
        return target.run_async(lambda: target.with_client(configuration, go))
    except ChaosError as exc:
        raise _fail(exc) from exc


# --- dispatchers --------------------------------------------------------------------------


async def _lease_holder(client: JobqClient) -> str | None:
    kv = await client.js.key_value(contract.BUCKET_LEADER)
    try:
        entry = await kv.get(LEASE_KEY)
    except Exception:
        return None
    return (entry.value or b"").decode() or None


def kill_dispatcher_leader(
    restart: str | bool = "auto",
    min_running: int = 1,
    takeover_timeout_s: float = 60.0,
    timeout_s: float = 60.0,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """``kill -9`` the dispatcher holding the leader lease (pid from the holder identity
    ``<host>-<pid>``, checked against the stack's dispatchers). ``restart``: start it again at
    once (true), never (false), or only when there is no standby (``auto``). Recovered when
    another identity holds the lease."""
    ids, ledger = _burst(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        await _running_on_nodes(
            client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
        )
        holder = await _lease_holder(client)
        if holder is None:
            raise ChaosError("no dispatcher holds the leader lease")
        pid = int(holder.rsplit("-", 1)[1])
        state = (await target.control(client.nc, "state"))["state"]
        index = next((int(i) for i, p in state.get("dispatchers", {}).items() if p == pid), None)
        if index is None:
            raise ChaosError(
                f"lease holder {holder} is none of this stack's dispatchers "
                f"{state.get('dispatchers')}; refusing to kill pid {pid}"
            )
        at = target.now_iso()
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        target.record_disruption(
            configuration,
            {
                "kind": "dispatcher_kill",
                "target": f"dispatcher-{index}",
                "pid": pid,
                "signal": "SIGKILL",
                "at": at,
                "holder": holder,
            },
        )
        disruption = len(RunState.load(configuration).disruptions) - 1
        if restart is True or (restart == "auto" and len(state.get("dispatchers", {})) < 2):

            async def gone() -> bool:
                return not pid_alive(pid)

            await target.poll(gone, timeout_s=10)
            await target.control(client.nc, "start_dispatcher", index=index)
        new_holder: str | None = None

        async def taken_over() -> bool:
            nonlocal new_holder
            new_holder = await _lease_holder(client)
            return new_holder is not None and new_holder != holder

        if not await target.poll(taken_over, timeout_s=takeover_timeout_s, interval_s=0.1):
            raise ChaosError(f"no dispatcher took the lease over within {takeover_timeout_s}s")
        recovered_at = target.now_iso()
        target.update_disruption(configuration, disruption, recovered_at=recovered_at, new_holder=new_holder)
        return {
            "killed": f"dispatcher-{index}",
            "pid": pid,
            "holder": holder,
            "new_holder": new_holder,
            "at": at,
            "takeover_s": round(time.monotonic() - started, 2),
        }

    try:
        return target.run_async(lambda: target.with_client(configuration, go))
    except ChaosError as exc:
        raise _fail(exc) from exc


def restart_dispatchers(configuration: Configuration = None) -> dict[str, Any]:
    """Start again every dispatcher of the stack whose process is gone."""

    async def go(client: JobqClient) -> dict[str, Any]:
        state = (await target.control(client.nc, "state"))["state"]
        restarted = []
        for index, pid in sorted(state.get("dispatchers", {}).items()):
            if not pid_alive(int(pid)):
                await target.control(client.nc, "start_dispatcher", index=int(index))
                restarted.append(f"dispatcher-{index}")
        return {"restarted": restarted}

    try:
        return target.run_async(lambda: target.with_client(configuration, go))
    except ChaosError as exc:
        raise _fail(exc) from exc


# --- NATS ---------------------------------------------------------------------------------


async def _stream_leaders(client: JobqClient) -> dict[str, str | None]:
    leaders: dict[str, str | None] = {}
    for stream in JOBQ_STREAMS:
        info = await client.js.stream_info(stream)
        leaders[stream] = info.cluster.leader if info.cluster else None
    return leaders


def kill_nats_server(
    server: str = "jobs-leader",
    min_running: int = 1,
    recovery_timeout_s: float = 60.0,
    timeout_s: float = 60.0,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """SIGKILL one nats-server of the 3-server cluster: ``jobs-leader`` (the server leading the
    job records' stream), ``random``, or a server name (jobq-0..2). Recovered when every jobq
    stream has a leader again on a live server."""
    ids, ledger = _burst(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        servers: dict[str, int] = (await target.control(client.nc, "state"))["state"].get("nats_servers", {})
        if len(servers) < 3:
            raise ChaosError(
                "broker kill needs a 3-server NATS cluster with R3 streams "
                "(`jobq chaos run broker-kill` starts one)"
            )
        await _running_on_nodes(
            client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger
        )
        if server == "jobs-leader":
            name = (await _stream_leaders(client))[f"KV_{contract.BUCKET_JOBS}"]
        elif server == "random":
            name = random.choice(sorted(servers))
        else:
            name = server
        if name not in servers:
            raise ChaosError(f"no nats-server {name!r} in {sorted(servers)}")
        pid = servers[name]
        at = target.now_iso()
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        target.record_disruption(
            configuration, {"kind": "nats_kill", "target": name, "pid": pid, "signal": "SIGKILL", "at": at}
        )
        disruption = len(RunState.load(configuration).disruptions) - 1
        leaders: dict[str, str | None] = {}

        async def led() -> bool:
            nonlocal leaders
            leaders = await _stream_leaders(client)
            return all(leader not in (None, name) for leader in leaders.values())

        if not await target.poll(led, timeout_s=recovery_timeout_s, interval_s=0.2):
            raise ChaosError(
                f"jobq streams without a leader {recovery_timeout_s}s after killing {name}: {leaders}"
            )
        target.update_disruption(configuration, disruption, recovered_at=target.now_iso())
        return {
            "killed": name,
            "pid": pid,
            "at": at,
            "leaders_after": leaders,
            "recovery_s": round(time.monotonic() - started, 2),
        }

    try:
        return target.run_async(lambda: target.with_client(configuration, go))
    except ChaosError as exc:
        raise _fail(exc) from exc


def restart_nats_servers(timeout_s: float = 60.0, configuration: Configuration = None) -> dict[str, Any]:
    """Start again every stopped member of the NATS cluster (same name, ports and store) and wait
    until it is a current replica of the job records' stream again."""
    state = RunState.load(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        servers: dict[str, int] = (await target.control(client.nc, "state"))["state"].get("nats_servers", {})
        restarted = []
        for name, pid in sorted(servers.items()):
            if pid is None or not pid_alive(pid):
                await target.control(client.nc, "start_nats", index=int(name.rsplit("-", 1)[1]))
                restarted.append(name)

        async def current() -> bool:
            info = await client.js.stream_info(f"KV_{contract.BUCKET_JOBS}")
            peers = info.cluster.replicas if info.cluster and info.cluster.replicas else []
            return len(peers) == 2 and all(p.current and not p.offline for p in peers)

        if restarted and not await target.poll(current, timeout_s=timeout_s, interval_s=0.3):
            raise ChaosError(f"{restarted} restarted but not current replicas within {timeout_s}s")
        return {"restarted": restarted, "at": target.now_iso()}

    try:
        result = target.run_async(lambda: target.with_client(configuration, go))
    except ChaosError as exc:
        raise _fail(exc) from exc
    for i, d in enumerate(state.disruptions):
        if d["kind"] == "nats_kill" and d["target"] in result["restarted"]:
            target.update_disruption(configuration, i, restarted_at=result["at"])
    return result
