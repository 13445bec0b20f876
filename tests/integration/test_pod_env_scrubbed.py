"""Local pods start with a scrubbed environment, in their own process group, optionally as
another user (real nats-server, node agent processes, fork server; workers.pod_env).

The node agents run with secrets in their environment; every kind of pod (a task forked by the
fork server, a task as a plain subprocess, a command) must see none of them, only its spec's
variables, the minimal base, its own HOME and the operator's pass-through names. Run as
``tests.integration.test_pod_env_scrubbed:report``, ``report`` is the task that tells."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.conftest import running_stack, submitter_client
from tests.integration import pod_env_probe
from workers import fork_client, pod_env

pytestmark = pytest.mark.timeout(180)

SECRETS = {
    "JOBQ_TEST_SECRET": "agent-secret-0451",
    contract.ENV_NATS_PASSWORD: "nats-password-0452",
    "AWS_SECRET_ACCESS_KEY": "cloud-key-0453",
}
SHARED = {"JOBQ_TEST_SHARED": "passed-through", pod_env.ENV_PASSTHROUGH: "JOBQ_TEST_SHARED"}
NODE = "node-1"
ONCE = {"max_attempts": 1}
POD_SHELL = (
    'env; echo "stat $(cut -d" " -f1,5,6 /proc/$$/stat)"; echo "uid $(id -u) $(id -g)"; '
    'touch "$HOME/w" && echo home-writable'
)


def report(args: dict[str, Any], ctx: object) -> dict[str, Any]:
    """The task: what this pod sees of itself."""
    return {
        **pod_env_probe.observe(),
        "forked": b"workers.fork_server" in Path("/proc/self/cmdline").read_bytes(),
    }


TASK = f"{__name__}:report"
PROBE = "tests.integration.pod_env_probe"


def _stack(tmp_path: Path, **env: str) -> contextlib.AbstractAsyncContextManager[Stack]:
    """One node whose agent has ``SECRETS`` and ``SHARED`` (and ``env``) in its environment."""
    return running_stack(tmp_path, nodes=1, node_cpu=4.0, env={**SECRETS, **SHARED, **env})


@pytest.fixture(params=["forked", "plain"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    async with _stack(tmp_path, JOBQ_FORK_SERVER="1" if request.param == "forked" else "0") as s:
        yield s


def allowed(spec_keys: set[str]) -> set[str]:
    return {*pod_env.BASE_NAMES, "HOME", "JOBQ_TEST_SHARED", *spec_keys}


def assert_scrubbed(environ: dict[str, str], *, initial: str = "") -> None:
    for name, value in SECRETS.items():
        assert name not in environ
        assert value not in " ".join(environ.values()) and value not in initial, name
    assert environ["JOBQ_TEST_SHARED"] == "passed-through"
    extra = {k for k in environ if not k.startswith("LC_")} - allowed(POD_KEYS)
    assert not extra, f"variables from the agent's environment: {sorted(extra)}"
    if contract.ENV_NATS_TOKEN in environ:  # its attempt's token, never its agent's (a node's)
        job, attempt = environ[contract.ENV_JOB_ID], environ[contract.ENV_ATTEMPT]
        assert environ[contract.ENV_NATS_TOKEN].startswith(f"jobq1:pod:{job}:{attempt}:")


POD_KEYS = {
    contract.ENV_JOB_ID,
    contract.ENV_ATTEMPT,
    contract.ENV_QUEUE,
    contract.ENV_TASK,
    contract.ENV_ARGS,
    contract.ENV_NATS_URL,
    contract.ENV_NATS_TOKEN,  # the pod's own, for its attempt (checked in assert_scrubbed)
    contract.ENV_NATS_CA,  # public: the CA NATS's certificate is verified against
    contract.ENV_NODE,
    contract.ENV_POD,
    contract.ENV_POD_UID,
}


async def wait_ok(client: JobqClient, job_id: str) -> contract.JobRecord:
    record = await client.wait([job_id], timeout=90)
    return record[job_id]


def pod_log(stack: Stack, job_id: str) -> str:
    return (stack.config.data_dir / "nodes" / NODE / f"{contract.pod_name(job_id, 1)}.log").read_text()


def shell_report(log: str) -> tuple[dict[str, str], list[str]]:
    """``env`` lines of a command pod's log as a mapping, and the other lines."""
    environ, rest = {}, []
    for line in log.splitlines():
        name, eq, value = line.partition("=")
        if eq and name.isidentifier():
            environ[name] = value
        else:
            rest.append(line)
    return environ, rest


async def test_task_and_command_pods_see_only_their_spec_the_base_and_the_pass_through(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    forked = "forked" in request.node.callspec.id
    async with submitter_client(stack) as client:
        task = await client.submit(task=TASK, args={}, retry=ONCE)
        command = await client.submit(command=["/bin/sh", "-c", POD_SHELL], retry=ONCE)
        seen = (await client.result(task.id, timeout=90)).output
        assert (await wait_ok(client, command.id)).phase == contract.JobPhase.SUCCEEDED

    environ = seen["environ"]
    assert seen["forked"] is forked
    assert_scrubbed(environ, initial=seen["proc_environ"])
    assert set(environ) >= POD_KEYS and environ[contract.ENV_JOB_ID] == task.id
    assert environ[contract.ENV_POD] == contract.pod_name(task.id, 1) and environ[contract.ENV_NODE] == NODE
    assert environ[contract.ENV_NATS_URL] == stack.nats_url
    assert environ[contract.ENV_NATS_CA] == stack.nats_ca != ""
    assert environ["HOME"] == str(stack.config.data_dir / "nodes" / NODE / "home" / environ[contract.ENV_POD])
    assert seen["home_writable"]
    assert seen["pgid"] == seen["pid"] and seen["sid"] == seen["pid"], "the pod leads its own session"

    shell_env, lines = shell_report(pod_log(stack, command.id))
    assert_scrubbed({k: v for k, v in shell_env.items() if k not in ("PWD", "SHLVL", "_")})
    assert shell_env[contract.ENV_JOB_ID] == command.id and contract.ENV_TASK not in shell_env
    pid, pgid, sid = next(line for line in lines if line.startswith("stat ")).split()[1:]
    assert pid == pgid == sid, "the command pod leads its own session"
    assert "home-writable" in lines


def python_runs_as(uid: int) -> bool:
    """Whether ``uid`` may run this interpreter (not when it lives in an unreadable home)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import workers"], user=uid, capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is in a root-only one)."""
    path = Path(tempfile.mkdtemp(prefix="jobq-pod-user-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running pods as another user needs root")


@needs_root
async def test_pods_run_as_the_pod_user(open_dir: Path) -> None:
    """A command pod (and a task pod, where that user can run the interpreter) as ``nobody``."""
    nobody = pod_env.PodUser.parse("nobody")
    tasks_too = python_runs_as(nobody.uid)
    async with _stack(open_dir, JOBQ_POD_USER="nobody") as stack:
        async with submitter_client(stack) as client:
            command = await client.submit(command=["/bin/sh", "-c", POD_SHELL], retry=ONCE)
            task = await client.submit(task=TASK, args={}, retry=ONCE) if tasks_too else None
            assert (await wait_ok(client, command.id)).phase == contract.JobPhase.SUCCEEDED
            seen = (await client.result(task.id, timeout=90)).output if task is not None else None
        shell_env, lines = shell_report(pod_log(stack, command.id))
        assert f"uid {nobody.uid} {nobody.gid}" in lines and "home-writable" in lines
        assert_scrubbed({k: v for k, v in shell_env.items() if k not in ("PWD", "SHLVL", "_")})
        log = stack.config.data_dir / "nodes" / NODE / f"{contract.pod_name(command.id, 1)}.log"
        assert log.stat().st_uid == nobody.uid, "the pod's log is its user's"
        if seen is not None:
            assert (seen["uid"], seen["gid"]) == (nobody.uid, nobody.gid) and seen["home_writable"]


@needs_root
async def test_a_forked_pod_runs_as_the_pod_user_with_exactly_its_environment(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork server is started with the node's scrubbed base only (a forked pod inherits its
    memory, /proc/<pid>/environ included); the pod drops to the user before it runs."""
    monkeypatch.setenv("JOBQ_TEST_SECRET", SECRETS["JOBQ_TEST_SECRET"])
    nobody = pod_env.PodUser.parse("nobody")
    base = pod_env.node_env(os.environ)
    assert fork_client.become_subreaper()
    forks = fork_client.ForkServer(
        python=sys.executable, log_path=open_dir / "fork-server.log", node="t", env=base
    )
    stop = asyncio.Event()
    running = asyncio.create_task(forks.run(stop))
    try:
        assert await forks.wait_ready(60), (open_dir / "fork-server.log").read_text()
        home = pod_env.make_home(open_dir / "home", nobody)
        env = pod_env.pod_env(base, {"JOBQ_JOB_ID": "j"}, home=home, node_keys={contract.ENV_POD: "p"})
        pod = await forks.spawn(PROBE, argv=[], env=env, log_path=open_dir / "pod.log", user=nobody)
        assert await asyncio.wait_for(pod.wait(), 30) == 0, (open_dir / "pod.log").read_text()
    finally:
        stop.set()
        await running
        fork_client.become_subreaper(False)
    seen = json.loads((open_dir / "pod.log").read_text().splitlines()[0])
    assert seen["environ"] == env, "os.environ is exactly the pod's"
    assert SECRETS["JOBQ_TEST_SECRET"] not in seen["proc_environ"]
    assert (seen["uid"], seen["gid"], seen["groups"]) == (nobody.uid, nobody.gid, list(nobody.groups))
    assert seen["home_writable"] and seen["pgid"] == seen["pid"] == seen["sid"]
    assert (open_dir / "pod.log").stat().st_uid == nobody.uid


def test_a_pod_user_without_root_fails_at_agent_start(tmp_path: Path) -> None:
    """The real CLI, as a user that is not root; skipped where that user cannot run Python."""
    if os.geteuid() != 0 or not python_runs_as(65534):
        pytest.skip("needs root, and a Python that nobody can run")
    done = subprocess.run(
        [sys.executable, "-m", "submitter.cli", "node-agent", "--name", "n", "--work-dir", str(tmp_path)],
        env={**os.environ, "JOBQ_POD_USER": "0"},
        user=65534,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "only root can run pods as another user" in done.stderr
