"""Waiting without polling (issue 14): a backlog of jobs waiting for a node's room or for a slot
in their queue costs the dispatcher nothing while nothing changes, and each change releases them.

The evidence is the NATS server's own count of the messages it received on the dispatcher's
connection (``/connz``): every reconcile pass reads the job's record from JetStream, so a
dispatcher that polls its waiters shows at least one message per waiter per resync.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from broker import contract
from broker.embedded.stack import Stack
from tests.conftest import FAST_ENV, running_stack, submitter_client
from tests.integration.helpers import wait_running

WAITERS = 120
"""Jobs waiting for the node's room, and as many waiting for their queue's one slot."""
WINDOW_S = 10.0
"""Five resync intervals (FAST_ENV's JOBQ_RESYNC_INTERVAL_S = 2): a poller looks at each
waiter at least five times in it."""


async def dispatcher_messages(stack: Stack) -> int:
    """Messages the NATS server received from the dispatcher's connection so far."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{stack.nats.monitor_url}/connz", params={"limit": "4096"}) as response:
        response.raise_for_status()
        connz: dict[str, Any] = await response.json()
    ours = [c for c in connz["connections"] if c.get("name") == "jobq-dispatcher"]
    assert len(ours) == 1, [c.get("name") for c in connz["connections"]]
    return int(ours[0]["in_msgs"])


def command(queue: str, cpu: float, *args: str) -> dict[str, Any]:
    return {"queue": queue, "command": list(args), "resources": {"cpu": cpu, "memory": "32Mi"}}


async def test_a_parked_backlog_costs_nothing_until_a_change_releases_it(tmp_path: Path) -> None:
    assert FAST_ENV["JOBQ_RESYNC_INTERVAL_S"] == "2", "WINDOW_S counts resyncs of 2 s"
    env = {"JOBQ_QUEUE_LIMITS": "slot=1"}
    async with running_stack(tmp_path, nodes=1, node_cpu=2.0, env=env) as stack, \
            submitter_client(stack) as client:
        # 1.5 + 0.25 of the node's 2 CPU are taken: a 1-CPU job fits the node later, not now;
        # a 0.1-CPU job of queue "slot" fits now but the queue's one slot is taken.
        blocker = await client.submit(**command("default", 1.5, "sleep", "3600"))
        holder = await client.submit(**command("slot", 0.25, "sleep", "3600"))
        await wait_running(client, [blocker.id, holder.id], count=2)
        node_waiters = [await client.submit(**command("default", 1.0, "true")) for _ in range(WAITERS)]
        slot_waiters = [await client.submit(**command("slot", 0.1, "true")) for _ in range(WAITERS)]
        waiters = [h.id for h in node_waiters + slot_waiters]
        for job_id in waiters:  # every record stored; each has been looked at once by now
            while (await client.get(job_id)) is None:
                await asyncio.sleep(0.1)
        await asyncio.sleep(3)

        before = await dispatcher_messages(stack)
        await asyncio.sleep(WINDOW_S)
        spent = await dispatcher_messages(stack) - before
        records = [await client.get(job_id) for job_id in waiters]
        assert all(r is not None and r.phase == contract.JobPhase.QUEUED and not r.attempts for r in records)
        # Lease renewals and the like remain (~2 a second); a poller would need >= 5 x 240.
        assert spent < WAITERS, f"{spent} messages from the dispatcher in {WINDOW_S:g}s of waiting"

        await client.cancel(holder.id)  # a slot frees: the queue's waiters go one by one
        await client.cancel(blocker.id)  # room frees: the node's waiters go two at a time
        done = await client.wait(waiters, timeout=240)
    assert {r.phase for r in done.values()} == {contract.JobPhase.SUCCEEDED}
    assert all(len(r.attempts) == 1 for r in done.values())
