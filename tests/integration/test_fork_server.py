"""Task attempts forked by the node's fork server, on the embedded stack (real nats-server, real
node agent process, real signals): each attempt is its own process with its own log, exit code,
memory limit and kill, and a fork server killed with SIGKILL loses nothing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.conftest import running_stack, submitter_client
from tests.integration.helpers import node_status, wait_for, wait_running

pytestmark = pytest.mark.timeout(180)

NODE = "node-1"
ONE_ATTEMPT = {"max_attempts": 1}


@pytest.fixture
async def one_node(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, nodes=1, node_cpu=4.0) as s:
        await fork_server_ready(s, starts=1)
        yield s


@pytest.fixture
async def client(one_node: Stack) -> AsyncIterator[JobqClient]:
    async with submitter_client(one_node) as c:
        yield c


def _stat(pid: int) -> tuple[int, int]:
    """(parent pid, process group) of a live process."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2])


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _agent_pid(stack: Stack) -> int:
    return stack.nodes[NODE].pid


def fork_server_pid(stack: Stack) -> int | None:
    """The node agent's fork server: its child running ``workers.fork_server``."""
    agent = _agent_pid(stack)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _stat(int(entry.name))[0] == agent and "workers.fork_server" in _cmdline(int(entry.name)):
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


async def running_pods(stack: Stack, count: int) -> list[contract.PodStatus]:
    deadline = time.monotonic() + 60
    while True:
        status = await node_status(stack, NODE)
        pods = [p for p in status.pods if p.phase == contract.PodPhase.RUNNING and p.pid]
        if len(pods) >= count:
            return pods
        assert time.monotonic() < deadline, f"only {len(pods)} of {count} pods running"


def assert_forked_pod(stack: Stack, pod: contract.PodStatus) -> None:
    """Its own process and group, a child of the agent, forked (it has no interpreter start of
    its own: its command line is the fork server's)."""
    assert pod.pid is not None
    parent, group = _stat(pod.pid)
    assert group == pod.pid, "the pod leads its own process group"
    assert parent == _agent_pid(stack), "the pod is the agent's child"
    assert "workers.fork_server" in _cmdline(pod.pid), _cmdline(pod.pid)


async def test_each_attempt_is_its_own_forked_process_with_its_log_and_exit_code(
    one_node: Stack, client: JobqClient
) -> None:
    sleepers = [await client.submit(task="demo.sleep", args={"seconds": 60}) for _ in range(2)]
    await wait_running(client, [h.id for h in sleepers], count=2)
    pods = await running_pods(one_node, 2)
    for pod in pods:
        assert_forked_pod(one_node, pod)
    assert len({p.pid for p in pods}) == 2

    ok = await client.submit(task="demo.exit", args={"code": 0})
    seven = await client.submit(task="demo.exit", args={"code": 7}, retry=ONE_ATTEMPT)
    records = await client.wait([ok.id, seven.id], timeout=60)
    assert records[ok.id].phase == contract.JobPhase.SUCCEEDED
    assert records[ok.id].attempts[-1].exit_code == 0
    failed = records[seven.id].attempts[-1]
    assert records[seven.id].phase == contract.JobPhase.DEAD
    assert failed.exit_code == 7 and failed.reason == contract.FailureReason.APP_ERROR
    assert "exiting with code 7 as asked" in failed.log_tail

    # Each pod's own log, holding its own job's lines only.
    log_dir = one_node.config.data_dir / "nodes" / NODE
    for handle in (ok, seven):
        text = (log_dir / f"{contract.pod_name(handle.id, 1)}.log").read_text()
        assert handle.id in text
        assert all(other.id not in text for other in (ok, seven, *sleepers) if other is not handle)

    # A pod delete (cancel) SIGTERMs the forked pod's group; its exit is recorded.
    for handle in sleepers:
        await client.cancel(handle.id)
    records = await client.wait([h.id for h in sleepers], timeout=60)
    for handle in sleepers:
        assert records[handle.id].phase == contract.JobPhase.CANCELLED, records[handle.id]
    await wait_for(
        lambda: all(not Path(f"/proc/{p.pid}").exists() for p in pods), timeout=10, what="cancelled pods gone"
    )


async def test_a_forked_attempt_is_held_to_its_memory_request(one_node: Stack, client: JobqClient) -> None:
    # 96Mi is less than the fork server's modules a forked pod inherits (numpy, scikit-learn):
    # only what the attempt itself adds is counted, as a fresh process would be.
    small = await client.submit(task="demo.sleep", args={"seconds": 3}, resources={"memory": "96Mi"})
    hog = await client.submit(
        task="demo.hog", args={"mb": 400, "seconds": 30}, resources={"memory": "256Mi"}, retry=ONE_ATTEMPT
    )
    records = await client.wait([small.id, hog.id], timeout=90)
    assert records[small.id].phase == contract.JobPhase.SUCCEEDED, records[small.id].attempts
    killed = records[hog.id].attempts[-1]
    assert killed.reason == contract.FailureReason.OOM and killed.exit_code == 137, killed


async def test_sigkill_of_the_fork_server_loses_no_attempt(one_node: Stack, client: JobqClient) -> None:
    first = await fork_server_ready(one_node, starts=1)
    running = [await client.submit(task="demo.sleep", args={"seconds": 5}) for _ in range(3)]
    await wait_running(client, [h.id for h in running], count=3)
    for pod in await running_pods(one_node, 3):
        assert_forked_pod(one_node, pod)
    os.kill(first, signal.SIGKILL)
    during = [await client.submit(task="demo.sleep", args={"seconds": 1}) for _ in range(2)]

    records = await client.wait([h.id for h in running + during], timeout=90)
    for handle in running + during:
        record = records[handle.id]
        assert record.phase == contract.JobPhase.SUCCEEDED, record.attempts
        assert len(record.attempts) == 1 and record.attempts[0].exit_code == 0, record.attempts

    second = await fork_server_ready(one_node, starts=2)
    assert second != first
    after = await client.submit(task="demo.sleep", args={"seconds": 30})
    await wait_running(client, [after.id], count=1)
    (pod,) = await running_pods(one_node, 1)
    assert_forked_pod(one_node, pod)
    await client.cancel(after.id)
    await client.wait([after.id], timeout=60)


async def fork_server_ready(stack: Stack, *, starts: int) -> int:
    """The pid of the node's fork server once the agent has seen it ready ``starts`` times (until
    then pods are plain subprocesses)."""
    log = stack.logs / f"{NODE}.log"
    await wait_for(
        lambda: log.read_text().count('"fork_server_started"') >= starts,
        timeout=60,
        what=f"fork server started {starts} time(s)",
    )
    pid = fork_server_pid(stack)
    assert pid is not None
    return pid


async def test_forked_pods_and_the_fork_server_die_with_their_node_agent(
    one_node: Stack, client: JobqClient
) -> None:
    server = await fork_server_ready(one_node, starts=1)
    job = await client.submit(task="demo.sleep", args={"seconds": 60})
    await wait_running(client, [job.id], count=1)
    (pod,) = await running_pods(one_node, 1)
    assert_forked_pod(one_node, pod)
    assert pod.pid is not None
    one_node.signal_node(NODE, signal.SIGKILL)  # the machine dies
    gone = [server, pod.pid]
    await wait_for(
        lambda: all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in gone),
        timeout=10,
        what="the fork server and the forked pod gone with their agent",
    )


def _zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return raw[raw.rindex(")") + 2 :].split()[0] == "Z"
