"""Chaos actions against the control plane: kill the dispatcher holding the leader lease, or one
nats-server of a 3-server cluster; start them again.

The leader is read from the lease in ``contract.BUCKET_LEADER`` (its holder identity is
``<host>-<pid>``) and checked against the stack's dispatchers; nats-servers and dispatchers are
found, and restarted, through the stack supervisor on ``contract.CONTROL_SUBJECT``.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from broker import contract
from chaos import activity, burst, target
from chaos.target import ChaosError, Configuration, RunState
from submitter.client import JobqClient

__all__ = ["kill_dispatcher_leader", "kill_nats_server", "restart_dispatchers", "restart_nats_servers"]

JOBQ_STREAMS = (
    contract.STREAM_SUBMIT,
    contract.STREAM_EVENTS,
    contract.STREAM_DEAD,
    contract.STREAM_ADVISORIES,
    f"KV_{contract.BUCKET_JOBS}",
    f"KV_{contract.BUCKET_RESULTS}",
    f"KV_{contract.BUCKET_LEADER}",
    f"KV_{contract.BUCKET_IDEMPOTENCY}",
    f"KV_{contract.BUCKET_PROGRESS}",
    f"KV_{contract.BUCKET_CHECKPOINTS}",
)


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


async def _stack_state(client: JobqClient) -> dict[str, Any]:
    state: dict[str, Any] = (await target.control(client.nc, "state"))["state"]
    return state


# --- dispatchers --------------------------------------------------------------------------


async def _lease_holder(client: JobqClient) -> str | None:
    kv = await client.js.key_value(contract.BUCKET_LEADER)
    try:
        entry = await kv.get(contract.LEADER_LEASE_KEY)
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
    ids, ledger = burst.of_run(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        await burst.running_on_nodes(client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger)
        holder = await _lease_holder(client)
        if holder is None:
            raise ChaosError("no dispatcher holds the leader lease")
        pid = int(holder.rsplit("-", 1)[1])
        state = await _stack_state(client)
        index = next((int(i) for i, p in state.get("dispatchers", {}).items() if p == pid), None)
        if index is None:
            raise ChaosError(
                f"lease holder {holder} is none of this stack's dispatchers "
                f"{state.get('dispatchers')}; refusing to kill pid {pid}"
            )
        started = time.monotonic()
        disruption, killed = activity.kill(configuration, pid, kind="dispatcher_kill",
                                           victim=f"dispatcher-{index}", holder=holder)
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
            "at": killed["at"],
            "takeover_s": round(time.monotonic() - started, 2),
        }

    return activity.on_stack(configuration, go)


def restart_dispatchers(configuration: Configuration = None) -> dict[str, Any]:
    """Start again every dispatcher of the stack whose process is gone."""

    async def go(client: JobqClient) -> dict[str, Any]:
        state = await _stack_state(client)
        restarted = []
        for index, pid in sorted(state.get("dispatchers", {}).items()):
            if not pid_alive(int(pid)):
                await target.control(client.nc, "start_dispatcher", index=int(index))
                restarted.append(f"dispatcher-{index}")
        return {"restarted": restarted}

    return activity.on_stack(configuration, go)


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
    ids, ledger = burst.of_run(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        servers: dict[str, int] = (await _stack_state(client)).get("nats_servers", {})
        if len(servers) < 3:
            raise ChaosError(
                "broker kill needs a 3-server NATS cluster with R3 streams "
                "(`jobq chaos run broker-kill` starts one)"
            )
        await burst.running_on_nodes(client, ids, at_least=min_running, timeout_s=timeout_s, ledger=ledger)
        if server == "jobs-leader":
            name = (await _stream_leaders(client))[f"KV_{contract.BUCKET_JOBS}"]
        elif server == "random":
            name = random.choice(sorted(servers))
        else:
            name = server
        if name not in servers:
            raise ChaosError(f"no nats-server {name!r} in {sorted(servers)}")
        pid = servers[name]
        started = time.monotonic()
        disruption, killed = activity.kill(configuration, pid, kind="nats_kill", victim=name)
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
            "at": killed["at"],
            "leaders_after": leaders,
            "recovery_s": round(time.monotonic() - started, 2),
        }

    return activity.on_stack(configuration, go)


def restart_nats_servers(timeout_s: float = 60.0, configuration: Configuration = None) -> dict[str, Any]:
    """Start again every stopped member of the NATS cluster (same name, ports and store) and wait
    until it is a current replica of the job records' stream again."""
    state = RunState.load(configuration)

    async def go(client: JobqClient) -> dict[str, Any]:
        servers: dict[str, int] = (await _stack_state(client)).get("nats_servers", {})
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

    result = activity.on_stack(configuration, go)
    for i, d in enumerate(state.disruptions):
        if d["kind"] == "nats_kill" and d["target"] in result["restarted"]:
            target.update_disruption(configuration, i, restarted_at=result["at"])
    return result
