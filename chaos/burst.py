"""The burst of ``demo.witness`` jobs a chaos run submits, and where it runs: the actions that
submit it and wait for it to drain, and what the disruptive actions pick their victims by."""

from __future__ import annotations

import contextlib
import json
import random
from collections import Counter
from typing import Any

from chaoslib.exceptions import ActivityFailed

from broker import contract
from chaos import target
from chaos.target import ChaosError, Configuration, RunState
from submitter.client import JobqClient

__all__ = ["submit_burst", "wait_for_drain"]


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

    async def go(client: JobqClient) -> dict[str, Any]:
        return await add_to_burst(client, configuration, count=count, min_seconds=min_seconds,
                                  max_seconds=max_seconds, queue=queue)

    return target.run_async(lambda: target.with_client(configuration, go))


async def add_to_burst(client: JobqClient, configuration: Configuration, *, count: int, min_seconds: float,
                       max_seconds: float, queue: str = "default") -> dict[str, Any]:
    """``submit_burst`` from inside an activity that already holds a client: the jobs join the
    run's burst (its ids, acks and ledger), so the checker judges them like the rest."""
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
    acked: dict[str, int] = await checker.submit_witnessed(client, specs)
    state.burst.extend(s.id for s in specs)
    state.acked.update(acked)
    state.ledger = str(ledger)
    state.submitted_at = state.submitted_at or target.now_iso()
    state.save(configuration)
    target.log.info("chaos_burst_submitted", run_id=run_id, jobs=count, ledger=str(ledger))
    return {"run_id": run_id, "submitted": count, "acked": len(acked), "first": specs[0].id,
            "last": specs[-1].id}


async def unfinished(client: JobqClient, ids: list[str]) -> int:
    """How many of the burst's jobs have not ended yet."""
    records = await target.burst_records(client, ids)
    return sum(1 for r in records.values() if r is None or not r.phase.is_terminal)


def wait_for_drain(timeout_s: float = 120.0, configuration: Configuration = None) -> dict[str, int]:
    """Wait until every job of the burst has finished (any terminal phase)."""
    ids = RunState.load(configuration).burst

    async def go(client: JobqClient) -> dict[str, int]:
        if not await target.wait_terminal(client, ids, timeout_s=timeout_s, configuration=configuration):
            raise ActivityFailed(f"the burst did not drain within {timeout_s}s")
        records = await target.burst_records(client, ids)
        return dict(Counter(r.phase.value if r else "missing" for r in records.values()))

    return target.run_async(lambda: target.with_client(configuration, go))


def of_run(configuration: Configuration) -> tuple[list[str], str | None]:
    """The run's burst: its job ids and its ledger."""
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


async def running_on_nodes(
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


def choose_victims(
    alive: list[str], by_node: Counter[str], *, count: int, names: list[str] | None, pick: str
) -> list[str]:
    """``names`` (all of them alive), or ``count`` of the ``alive`` nodes: the ``busiest`` (most
    running burst jobs, per ``by_node``) or ``random``. Never every live node."""
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


def node_names(names: str | list[str] | None) -> list[str] | None:
    """An activity's ``names`` argument: a comma-separated string or a list (None when empty)."""
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()] or None
    return names or None
