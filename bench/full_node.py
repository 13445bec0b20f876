"""An embedded stack whose one node is full, for the issue-14 benches (intake, backlog, latency).

One node agent of ``NODE_CPU`` cores runs a ``sleep`` job (``BLOCKER_CPU``), so a job that asks
for ``WAITING_CPU`` fits the node but not now: it waits in ``queued`` for capacity, the backlog's
normal state (nothing written while it waits). A job that asks for ``QUICK_CPU`` still fits in
what is left, one at a time. Not a bench on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from broker import contract, policy
from broker.embedded.stack import Stack, StackConfig
from submitter.client import JobqClient

NODE_CPU = 2.0
BLOCKER_CPU = 1.5
WAITING_CPU = 1.0
QUICK_CPU = 0.25
BLOCKER_ID = "bench-blocker"

WAITING: dict[str, Any] = {"command": ["sleep", "1"], "resources": {"cpu": WAITING_CPU, "memory": "64Mi"}}
"""Fields of a job that waits behind the blocker (it would sleep 1 s if it ever ran)."""
QUICK: dict[str, Any] = {"command": ["true"], "resources": {"cpu": QUICK_CPU, "memory": "64Mi"}}
"""Fields of a job that starts at once next to the blocker and ends at once."""


def stack_config(work: Path, *, sync_always: bool, env: dict[str, str] | None = None) -> StackConfig:
    return StackConfig(
        data_dir=work / "stack",
        nodes=1,
        node_cpu=NODE_CPU,
        node_memory="4Gi",
        nats_port=-1,
        http_port=0,
        nats_sync_always=sync_always,
        env={"JOBQ_QUEUE_POLICY": policy.OPEN_ENV, **(env or {})},  # its jobs are commands
    )


async def start_full(work: Path, *, sync_always: bool, env: dict[str, str] | None = None) -> Stack:
    """A started stack whose node runs the blocker (its attempt running)."""
    stack = Stack(stack_config(work, sync_always=sync_always, env=env))
    try:
        await stack.start()
        async with JobqClient(stack.nats_url,
                              nats_options=stack.nats_options(), name="bench-blocker") as client:
            await client.submit(
                id=BLOCKER_ID,
                queue="bench-blocker",
                command=["sleep", "86400"],
                resources={"cpu": BLOCKER_CPU, "memory": "64Mi"},
            )
            deadline = time.monotonic() + 60
            while True:
                record = await client.get(BLOCKER_ID)
                current = record.current if record else None
                if current is not None and current.state == contract.AttemptState.RUNNING:
                    return stack
                if time.monotonic() > deadline:
                    raise RuntimeError(f"blocker not running after 60 s: {record}")
                await asyncio.sleep(0.1)
    except BaseException:
        await stack.stop()
        raise


async def submit_all(client: JobqClient, jobs: Iterable[dict[str, Any]], *, in_flight: int = 256) -> None:
    """Publish every job through the SDK, ``in_flight`` at once (each waits for its publish ack)."""
    gate = asyncio.Semaphore(in_flight)

    async def one(fields: dict[str, Any]) -> None:
        async with gate:
            await client.submit(**fields)

    await asyncio.gather(*(one(fields) for fields in jobs))


class RecordWatch:
    """When each of a set of job ids first had a record in ``jobq_jobs`` (a KV watch, keys only)."""

    def __init__(self, client: JobqClient, ids: Iterable[str]) -> None:
        self._client = client
        self.ids = set(ids)
        self.seen: dict[str, float] = {}
        self._done = asyncio.Event()
        if not self.ids:
            self._done.set()
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None

    async def start(self) -> None:
        kv = await self._client.js.key_value(contract.BUCKET_JOBS)
        self._watcher = await kv.watchall(meta_only=True)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is None or entry.key not in self.ids or entry.key in self.seen:
                continue
            self.seen[entry.key] = time.perf_counter()
            if len(self.seen) == len(self.ids):
                self._done.set()
                return

    async def wait(self, timeout: float) -> bool:
        """True when every id has a record; False when ``timeout`` ran out first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
        return self._done.is_set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    def rate(self) -> float:
        """Records per second from the first record seen to the last."""
        times = sorted(self.seen.values())
        if len(times) < 2 or times[-1] <= times[0]:
            return float("nan")
        return (len(times) - 1) / (times[-1] - times[0])
