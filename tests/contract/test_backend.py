"""One behavioural suite for every ClusterBackend: the in-memory fake, the local node agents over
real NATS, and Kubernetes on the real control plane with simulated kubelets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import contract, natsutil, settings
from broker.backends import base
from broker.backends.fake import FakeBackend
from broker.backends.local import LocalBackend
from broker.embedded.natsserver import NatsServer
from workers import pod_runtime

pytestmark = pytest.mark.timeout(300)


@dataclass
class Harness:
    backend: base.ClusterBackend
    nodes: list[str]
    kill_node: Callable[[str], None]
    runs_pods: bool
    """False for the fake: pods never start by themselves."""
    node_loss_bound_s: float = 15.0
    """How long the backend alone may take to see a killed node (the dispatcher adds heartbeats)."""


@pytest.fixture(params=["fake", "local",
                        pytest.param("kubernetes", marks=[pytest.mark.k8s, pytest.mark.slow])])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "fake":
        fake = FakeBackend()
        async with fake:
            yield Harness(fake, list(fake.ready), fake.kill_node, runs_pods=False)
    elif request.param == "local":
        async for h in _local(tmp_path):
            yield h
    else:
        async for h in _kubernetes():
            yield h


async def _local(tmp_path: Path) -> AsyncIterator[Harness]:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    await server.start()
    names = ["local-1", "local-2", "local-3"]
    agents: dict[str, asyncio.subprocess.Process] = {}
    nc = await natsutil.connect(server.url, name="contract-test")
    try:
        for name in names:
            agents[name] = await pod_runtime.spawn(
                [sys.executable, "-m", "submitter.cli", "node-agent", "--name", name, "--nats", server.url,
                 "--work-dir", str(tmp_path / "nodes")],
                env={**os.environ}, log_path=tmp_path / f"{name}.log")
        async with LocalBackend(nc, node_timeout_s=3.0) as backend:
            await eventually(lambda: _count_nodes(backend, 3), what="3 local nodes reporting", timeout=60)

            def kill(node: str) -> None:
                os.kill(agents[node].pid, signal.SIGKILL)
            yield Harness(backend, names, kill, runs_pods=True)
    finally:
        await asyncio.gather(*(pod_runtime.terminate(p, grace_s=2) for p in agents.values()))
        await nc.drain()
        await server.stop()


async def _count_nodes(backend: base.ClusterBackend, n: int) -> bool:
    return len([x for x in await backend.list_nodes() if x.ready]) >= n


async def _kubernetes() -> AsyncIterator[Harness]:
    from broker.backends.kubernetes import KubernetesBackend
    from tests.k8s.cluster import NODE_NAMES, shared_cluster

    cluster = shared_cluster()
    cluster.heal()
    config = settings.BackendSettings(kind="kubernetes", kubeconfig=str(cluster.kubeconfig),
                                      namespace=f"jobq-c-{uuid.uuid4().hex[:8]}")
    async with KubernetesBackend(config) as backend:
        await asyncio.wait_for(backend.wait_synced(), 30)
        # The backend alone judges a node by its Lease (leaseDurationSeconds 40, renewed every 10 s
        # by a stock kubelet): at most 40 s after the last renewal, which was at most 10 s ago.
        yield Harness(backend, list(NODE_NAMES), cluster.kill, runs_pods=True, node_loss_bound_s=60.0)


async def eventually(check: Callable[[], Awaitable[bool]], *, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        await asyncio.sleep(0.1)


def spec(job_id: str, *, attempt: int = 1, avoid: tuple[str, ...] = ()) -> contract.PodSpec:
    return contract.PodSpec(name=contract.pod_name(job_id, attempt), job_id=job_id, attempt=attempt,
                            queue="default", command=("sleep", "120"), env={"JOBQ_TEST": "1"},
                            resources=contract.Resources(cpu=0.1, memory="64Mi"), avoid_nodes=avoid)


async def create(backend: base.ClusterBackend, pod: contract.PodSpec, *, timeout: float = 20) -> None:
    """Create, retrying transient errors (a fresh namespace has no service account for ~1s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await backend.create_pod(pod)
            return
        except (base.PodRejected, base.PlacementUncertain):
            raise
        except base.BackendError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def job() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


async def pods_of(h: Harness, job_id: str) -> list[base.PodState]:
    return await h.backend.list_pods(job_id=job_id)


async def test_create_is_idempotent(harness: Harness) -> None:
    job_id = job()
    await create(harness.backend, spec(job_id))
    await create(harness.backend, spec(job_id))
    await eventually(lambda: _has(harness, job_id, 1), what="the pod is listed")
    if harness.runs_pods:
        await eventually(lambda: _phase(harness, job_id, contract.PodPhase.RUNNING), what="the pod runs")
    assert len(await pods_of(harness, job_id)) == 1
    await harness.backend.delete_pod(contract.pod_name(job_id, 1))
    await eventually(lambda: _has(harness, job_id, 0), what="the pod is gone", timeout=30)


async def _has(h: Harness, job_id: str, n: int) -> bool:
    return len(await pods_of(h, job_id)) == n


async def _phase(h: Harness, job_id: str, phase: contract.PodPhase) -> bool:
    return any(p.phase == phase for p in await pods_of(h, job_id))


async def test_delete_of_missing_pod_is_fine(harness: Harness) -> None:
    await harness.backend.delete_pod(contract.pod_name(job(), 1))


async def test_list_by_job_id(harness: Harness) -> None:
    a, b = job(), job()
    await create(harness.backend, spec(a))
    await create(harness.backend, spec(b, attempt=2))
    await eventually(lambda: _has(harness, a, 1), what="pod a listed")
    await eventually(lambda: _has(harness, b, 1), what="pod b listed")
    [pa], [pb] = await pods_of(harness, a), await pods_of(harness, b)
    assert (pa.job_id, pa.attempt, pa.name) == (a, 1, contract.pod_name(a, 1))
    assert (pb.job_id, pb.attempt, pb.name) == (b, 2, contract.pod_name(b, 2))
    names = {p.name for p in await harness.backend.list_pods()}
    assert {pa.name, pb.name} <= names
    for name in (pa.name, pb.name):
        await harness.backend.delete_pod(name)


async def test_avoid_nodes_is_respected(harness: Harness) -> None:
    keep = harness.nodes[-1]
    job_id = job()
    await create(harness.backend, spec(job_id, avoid=tuple(harness.nodes[:-1])))

    async def placed() -> bool:
        return any(p.node for p in await pods_of(harness, job_id))
    await eventually(placed, what="the pod is placed")
    [pod] = await pods_of(harness, job_id)
    assert pod.node == keep
    await harness.backend.delete_pod(pod.name)


async def test_killed_nodes_pods_show_node_not_ready(harness: Harness) -> None:
    job_id = job()
    await create(harness.backend, spec(job_id))

    async def placed() -> bool:
        pods = await pods_of(harness, job_id)
        return bool(pods) and pods[0].node is not None and (
            not harness.runs_pods or pods[0].phase == contract.PodPhase.RUNNING)
    await eventually(placed, what="the pod runs on a node")
    [pod] = await pods_of(harness, job_id)
    assert pod.node_ready
    assert pod.node is not None
    killed_at = time.monotonic()
    harness.kill_node(pod.node)

    async def lost() -> bool:
        return any(not p.node_ready for p in await pods_of(harness, job_id))
    await eventually(lost, what="the pod's node is NotReady", timeout=harness.node_loss_bound_s)
    detected = time.monotonic() - killed_at
    nodes = {n.name: n for n in await harness.backend.list_nodes()}
    assert not nodes[pod.node].ready
    assert nodes[pod.node].not_ready_reason or harness.backend.name == "fake"
    # The pod is still listed (what was lost is visible) until deleted; a forced delete (what the
    # dispatcher asks for on a lost node) works although no kubelet confirms it.
    await harness.backend.delete_pod(pod.name, force=True)
    await eventually(lambda: _has(harness, job_id, 0), what="the lost pod is forgotten", timeout=15)
    print(f"{harness.backend.name}: node loss seen after {detected:.1f}s")


async def test_log_of_an_unknown_pod_is_unavailable(harness: Harness) -> None:
    with pytest.raises(base.LogUnavailable):
        await harness.backend.read_log(contract.pod_name(job(), 1), node=harness.nodes[0])


async def test_log_is_read_from_an_offset_while_and_after_the_pod_runs(harness: Harness) -> None:
    if not harness.runs_pods:
        pytest.skip("the fake runs nothing (tests/unit/test_logs.py covers its logs)")
    job_id = job()
    pod = spec(job_id).model_copy(update={"command": (
        "sh", "-c", "echo line-1; echo line-2; sleep 2; echo line-3; exit 3")})
    await create(harness.backend, pod)

    async def printed_two_lines() -> bool:
        pods = await pods_of(harness, job_id)
        if not pods or pods[0].node is None:
            return False
        try:
            read = await harness.backend.read_log(pod.name, node=pods[0].node)
        except base.LogUnavailable:
            return False  # not started yet
        return read.data == b"line-1\nline-2\n" and read.running
    await eventually(printed_two_lines, what="the running pod's first lines are read")
    await eventually(lambda: _phase(harness, job_id, contract.PodPhase.FAILED), what="the pod fails")
    [state] = await pods_of(harness, job_id)
    read = await harness.backend.read_log(pod.name, node=state.node)
    assert (read.data, read.next_offset, read.running) == (b"line-1\nline-2\nline-3\n", 21, False)
    part = await harness.backend.read_log(pod.name, node=state.node, offset=7, limit=7)
    assert (part.data, part.next_offset) == (b"line-2\n", 14)
    end = await harness.backend.read_log(pod.name, node=state.node, offset=21)
    assert (end.data, end.next_offset) == (b"", 21)
    await harness.backend.delete_pod(pod.name)
    await eventually(lambda: _has(harness, job_id, 0), what="the pod is gone", timeout=30)
    if harness.backend.name == "kubernetes":  # the log lived as long as the pod
        with pytest.raises(base.LogUnavailable):
            await harness.backend.read_log(pod.name, node=state.node)
    else:  # the node keeps the file
        assert (await harness.backend.read_log(pod.name, node=state.node)).data.endswith(b"line-3\n")


async def test_a_pod_whose_program_cannot_start_fails_with_start_error(harness: Harness) -> None:
    if not harness.runs_pods:
        pytest.skip("the fake runs no processes")
    job_id = job()
    pod = spec(job_id).model_copy(update={"command": ("no-such-program-jobq", "--x")})
    await create(harness.backend, pod)

    async def failed() -> bool:
        return any(p.phase == contract.PodPhase.FAILED for p in await pods_of(harness, job_id))

    await eventually(failed, what="the pod reported Failed")
    (seen,) = await pods_of(harness, job_id)
    assert (seen.reason, seen.exit_code) == (contract.POD_REASON_START_ERROR, contract.EXIT_START_ERROR)
    assert seen.message == "[Errno 2] No such file or directory: 'no-such-program-jobq'"
    await harness.backend.delete_pod(pod.name)


async def test_every_pod_has_its_own_uid_and_its_process_sees_it(harness: Harness) -> None:
    """The uid the backend reports is the one the pod's worker stamps on its outputs
    (contract.ENV_POD_UID), and a pod created again under the same name gets a new one."""
    job_id = job()
    command = ("sh", "-c", f'echo "uid=${contract.ENV_POD_UID}"; sleep 120')
    pod = spec(job_id).model_copy(update={"command": command})

    async def listed_uid() -> str:
        await create(harness.backend, pod)
        await eventually(lambda: _has_uid(harness, job_id), what="the pod is listed with its uid")
        [state] = await pods_of(harness, job_id)
        [again] = await pods_of(harness, job_id)
        assert again.uid == state.uid
        if harness.runs_pods:  # (a local node keeps appending a pod name's log file)
            async def printed() -> bool:
                try:
                    read = await harness.backend.read_log(pod.name, node=state.node)
                except base.LogUnavailable:
                    return False
                return read.data.decode().endswith(f"uid={state.uid}\n")
            await eventually(printed, what="the pod printed the uid it is listed with")
        await harness.backend.delete_pod(pod.name)
        await eventually(lambda: _has(harness, job_id, 0), what="the pod is gone", timeout=60)
        return state.uid

    first = await listed_uid()
    assert first != await listed_uid()


async def _has_uid(h: Harness, job_id: str) -> bool:
    return any(p.uid for p in await pods_of(h, job_id))


async def test_local_backend_paused_takes_no_live_node_for_dead(tmp_path: Path) -> None:
    """The process running the backend is paused longer than the node timeout (a dispatcher
    SIGSTOPped, or starved of CPU) while its nodes keep reporting. On waking, their statuses
    still sit unread in its socket: no live node may be reported NotReady meanwhile (CI once
    saw a recovery shorter than detection itself: attempts lost on a node that never died).
    Evidence: every answer of ``list_nodes`` after the pause, polled as fast as the loop turns."""
    async with contextlib.aclosing(_local(tmp_path)) as harnesses:
        h = await anext(harnesses)
        timeout_s = settings.DispatcherSettings().node_timeout_s
        await eventually(lambda: _count_nodes(h.backend, 3), what="3 local nodes ready")
        for _ in range(2):
            time.sleep(timeout_s + 1.5)  # noqa: ASYNC251 - the point: the whole loop stops, no callback runs
            not_ready: set[str] = set()
            deadline = time.monotonic() + 2 * timeout_s
            while time.monotonic() < deadline:
                not_ready |= {n.name for n in await h.backend.list_nodes() if not n.ready}
                await asyncio.sleep(0)
            assert not not_ready, f"live nodes reported NotReady after a pause: {sorted(not_ready)}"
        # A node that really dies is still seen, within the timeout of listening.
        h.kill_node(h.nodes[0])
        await eventually(lambda: _not_ready(h.backend, h.nodes[0]), what="the killed node NotReady",
                         timeout=h.node_loss_bound_s)


async def _not_ready(backend: base.ClusterBackend, name: str) -> bool:
    return any(n.name == name and not n.ready for n in await backend.list_nodes())
