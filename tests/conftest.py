"""Shared fixtures: real nats-server, a real embedded stack, an SDK client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from broker import contract, natsutil, policy
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack, StackConfig
from submitter.client import JobqClient

FAST_ENV = {
    "JOBQ_RESYNC_INTERVAL_S": "2",
    "JOBQ_HEARTBEAT_TIMEOUT_S": "10",
    "JOBQ_NODE_TIMEOUT_S": "3",
    "JOBQ_LEASE_TTL_S": "3",
    # Tests run commands, module:function tasks and images: open every queue (the default
    # admits built-in tasks only; tests/integration/test_queue_policy.py tests the policy).
    "JOBQ_QUEUE_POLICY": policy.OPEN_ENV,
}


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A real nats-server with JetStream on a free loopback port and a temp store."""
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await natsutil.connect(nats_server.url, name="test")
    try:
        yield conn
    finally:
        await conn.drain()


async def start_stack(
    tmp_path: Path,
    *,
    nodes: int = 3,
    dispatchers: int = 1,
    env: dict[str, str] | None = None,
    node_cpu: float = 2.0,
    nats_url: str | None = None,
) -> Stack:
    stack = Stack(
        StackConfig(
            data_dir=tmp_path / "stack",
            nodes=nodes,
            nats_port=-1,
            http_port=0,
            dispatchers=dispatchers,
            node_cpu=node_cpu,
            nats_url=nats_url,
            env={**FAST_ENV, **(env or {})},
        )
    )
    try:
        await stack.start()
    except BaseException:
        await stack.stop()
        raise
    return stack


@contextlib.asynccontextmanager
async def running_stack(tmp_path: Path, **options: Any) -> AsyncIterator[Stack]:
    """``start_stack`` as a context manager: the stack is stopped however the test ends."""
    s = await start_stack(tmp_path, **options)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The embedded stack: nats-server, one dispatcher and three node agents, as processes."""
    async with running_stack(tmp_path) as s:
        yield s


def submitter_client(stack: Stack, *, name: str = "jobq-client") -> JobqClient:
    """An SDK client of ``stack`` as a submitting service (the stack's submitter user)."""
    return JobqClient(stack.nats_url, name=name, nats_options=stack.nats_options("submitter"))


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[JobqClient]:
    async with submitter_client(stack) as c:
        yield c


@pytest.fixture(
    params=["local", pytest.param("kubernetes", marks=[pytest.mark.k8s, pytest.mark.timeout(300)])]
)
async def any_stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """The stack on each backend: three local node agents, or the real Kubernetes control plane
    with three simulated kubelets (built and started once per session; see tests/k8s)."""
    options: dict[str, Any] = {}
    if request.param == "kubernetes":
        from tests.k8s.cluster import k8s_env, shared_cluster

        cluster = shared_cluster()
        cluster.heal()
        options = {"nodes": 0, "env": k8s_env(cluster, f"jobq-t-{uuid.uuid4().hex[:8]}")}
    async with running_stack(tmp_path, **options) as s:
        yield s


@pytest.fixture
async def any_client(any_stack: Stack) -> AsyncIterator[JobqClient]:
    async with submitter_client(any_stack) as c:
        yield c


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    leaked = [t for t in leaked if "nats" not in repr(t.get_coro()).lower()]
    assert not leaked, f"tasks left running: {leaked}"


def cli_env(stack: Stack) -> dict[str, str]:
    """The environment of a `jobq` command run against ``stack``, as a submitting service."""
    own = stack.auth.process_env("submitter") if stack.auth is not None else {}
    tls = {contract.ENV_NATS_CA: stack.nats_ca} if stack.nats_ca else {}
    return {**os.environ, "JOBQ_NATS_URL": stack.nats_url, "JOBQ_LOG_FORMAT": "json", **own, **tls}
