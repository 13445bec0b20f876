"""The fork server with real processes and signals (no NATS): what a forked pod is, and that its
exit status survives the server. Run as ``python -m tests.unit.test_fork_server <code>`` this file
is also the probe a forked pod runs (``probe``)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from workers import fork_client, pod_runtime

PROBE = "tests.unit.test_fork_server"


def probe() -> None:
    """What the forked pod sees, as one JSON line on stdout; exits with ``argv[1]`` or sleeps
    (``sleep``) until signalled."""
    import numpy

    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "pgid": os.getpgid(0),
                "sid": os.getsid(0),
                "ppid": os.getppid(),
                "argv": sys.argv[1:],
                "probe_env": os.environ.get("PROBE_ENV"),
                "env_keys": sorted(os.environ),
                "random": random.random(),
                "numpy": float(numpy.random.rand()),
                "fds": fds,
                "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            }
        ),
        flush=True,
    )
    if sys.argv[1] == "sleep":
        signal.pause()
    sys.exit(int(sys.argv[1]))


@pytest.fixture
async def forks(tmp_path: Path) -> AsyncIterator[fork_client.ForkServer]:
    assert fork_client.become_subreaper()
    server = fork_client.ForkServer(python=sys.executable, log_path=tmp_path / "fork-server.log", node="t")
    stop = asyncio.Event()
    running = asyncio.create_task(server.run(stop))
    try:
        assert await server.wait_ready(60), (tmp_path / "fork-server.log").read_text()
        yield server
    finally:
        stop.set()
        await running
        fork_client.become_subreaper(False)


async def spawn(forks: fork_client.ForkServer, log: Path, *argv: str) -> fork_client.ForkedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "PROBE_ENV": log.name}
    return await forks.spawn(PROBE, argv=argv, env=env, log_path=log)


def seen(log: Path) -> dict[str, object]:
    first: dict[str, object] = json.loads(log.read_text().splitlines()[0])
    return first


async def test_a_forked_pod_is_its_own_process_with_its_environment_log_and_exit_code(
    forks: fork_client.ForkServer, tmp_path: Path
) -> None:
    pods = [await spawn(forks, tmp_path / f"pod-{code}.log", str(code)) for code in (0, 7)]
    assert [await p.wait() for p in pods] == [0, 7]
    a, b = seen(tmp_path / "pod-0.log"), seen(tmp_path / "pod-7.log")
    for pod, view, argv in ((pods[0], a, ["0"]), (pods[1], b, ["7"])):
        assert view["pid"] == view["pgid"] == view["sid"] == pod.pid
        assert view["ppid"] == os.getpid()
        assert view["argv"] == argv
        assert view["fds"] == [0, 1, 2, 3]  # stdin, stdout, stderr and the listing of /proc/self/fd
        assert view["sigterm_default"] is True
        assert view["env_keys"] == ["PATH", "PROBE_ENV"]  # the pod's environment, not the server's
    assert (a["probe_env"], b["probe_env"]) == ("pod-0.log", "pod-7.log")
    assert a["random"] != b["random"] and a["numpy"] != b["numpy"], "random generators re-seeded"
    assert pods[0].inherited_bytes > 0


async def test_signals_reach_the_pod_and_its_status_outlives_a_killed_server(
    forks: fork_client.ForkServer, tmp_path: Path
) -> None:
    killed = await spawn(forks, tmp_path / "killed.log", "sleep")
    termed = await spawn(forks, tmp_path / "termed.log", "sleep")
    await asyncio.sleep(0.5)
    pod_runtime.signal_group(killed.pid, signal.SIGKILL)
    assert await killed.wait() == -signal.SIGKILL

    assert forks.process is not None
    first = forks.process.pid
    os.kill(first, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert await pod_runtime.terminate(termed, grace_s=5) == 128 + signal.SIGTERM

    assert await forks.wait_ready(60) and forks.starts == 2 and forks.process.pid != first
    again = await spawn(forks, tmp_path / "again.log", "3")
    assert await again.wait() == 3


async def test_no_server_ready_means_a_plain_subprocess(tmp_path: Path) -> None:
    server = fork_client.ForkServer(python=sys.executable, log_path=tmp_path / "fs.log", node="t")
    with pytest.raises(fork_client.ForkUnavailable):
        await server.spawn(PROBE, argv=["0"], env={}, log_path=tmp_path / "p.log")
    command = [sys.executable, "-m", "workers.runner"]
    process, inherited = await fork_client.start_pod(
        command,
        forks=server,
        python=sys.executable,
        env={"PATH": os.environ.get("PATH", "")},
        log_path=tmp_path / "plain.log",
    )
    assert inherited == 0 and await process.wait() == 2  # no JOBQ_* environment: bad arguments
    assert "JOBQ_" in (tmp_path / "plain.log").read_text()


@pytest.mark.parametrize(
    ("command", "pod_env", "expected"),
    [
        (["py", "-m", "workers.runner", "x"], {}, ("workers.runner", ["x"])),
        (["py", "-m", "workers.fork_server"], {}, None),  # not a module a pod may run forked
        (["other-py", "-m", "workers.runner"], {}, None),
        (["true"], {}, None),
        (["py", "-m", "workers.runner"], {"PYTHONHASHSEED": "0"}, None),  # read at interpreter start
        (["py", "-m", "workers.runner"], {"OMP_NUM_THREADS": "1"}, None),  # read when numpy loads
        (["py", "-m", "workers.runner"], {"JOBQ_ARGS": "{}"}, ("workers.runner", [])),
    ],
)
def test_which_pods_are_forked(command: list[str], pod_env: dict[str, str], expected: object) -> None:
    assert fork_client.forkable(command, python="py", pod_env=pod_env, base_env={}) == expected


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False), ("off", False)])
def test_the_setting(value: str | None, on: bool) -> None:
    environ = {} if value is None else {fork_client.ENV_FORK_SERVER: value}
    assert fork_client.enabled_from_env(environ) is on


if __name__ == "__main__":
    probe()
