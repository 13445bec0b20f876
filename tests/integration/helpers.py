"""Helpers for integration tests that break things on purpose."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient


async def wait_for(predicate: Callable[[], object], *, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.1)


async def running_records(client: JobqClient, ids: list[str]) -> list[contract.JobRecord]:
    records = [await client.get(i) for i in ids]
    return [
        r
        for r in records
        if r is not None and r.current is not None and r.current.state == contract.AttemptState.RUNNING
    ]


async def wait_running(
    client: JobqClient, ids: list[str], *, count: int, timeout: float = 90
) -> list[contract.JobRecord]:
    deadline = time.monotonic() + timeout
    while True:
        running = await running_records(client, ids)
        if len(running) >= count:
            return running
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(running)} of {count} jobs running after {timeout}s")
        await asyncio.sleep(0.2)


async def node_status(stack: Stack, name: str, *, timeout: float = 10) -> contract.NodeStatus:
    """The next heartbeat of node ``name``."""
    assert stack.nc is not None
    sub = await stack.nc.subscribe(contract.node_status_subject(name))
    try:
        msg = await sub.next_msg(timeout=timeout)
        return contract.NodeStatus.model_validate_json(msg.data)
    finally:
        await sub.unsubscribe()


async def success_events(client: JobqClient, job_id: str) -> int:
    events = await client.events(job_id, settled=True)
    return sum(1 for e in events if e.type == contract.EventType.SUCCEEDED)


JOBQ = [sys.executable, "-m", "submitter.cli"]
"""The jobq CLI as a subprocess command line (the interpreter running the tests)."""


async def start_jobq_up(
    data_dir: Path, *flags: str, nodes: int, env: Mapping[str, str]
) -> tuple[asyncio.subprocess.Process, str, dict[str, Any]]:
    """Start `jobq up` on free ports and wait for its banner; return the process, the banner and
    its stack.json. The caller stops it (SIGINT is Ctrl-C)."""
    process = await asyncio.create_subprocess_exec(
        *JOBQ, "up", "--data-dir", str(data_dir), "--nats-port", "-1", "--http-port", "0",
        "--nodes", str(nodes), *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=dict(env),
    )
    assert process.stdout is not None
    banner = ""
    while "Ctrl-C" not in banner:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line, f"jobq up exited early: {banner}"
        banner += line.decode()
    return process, banner, json.loads((data_dir / "stack.json").read_text())
