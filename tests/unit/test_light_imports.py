"""The light client's import graph, in this (full) environment: a Python that cannot import the
extras' packages (``sys.modules[name] = None``, as if not installed) still imports the SDK and runs
the client CLI, and a server-side command says in one line which extra to install.
tests/integration/test_light_install.py does the same from a real install without extras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from submitter import clibase, extras

EXTRA_MODULES = sorted({m for modules in extras.EXTRAS.values() for m in modules} | {"numpy", "scipy"})

PRELUDE = f"""
import sys
for name in {EXTRA_MODULES!r}:
    sys.modules[name] = None  # ImportError on import, find_spec None: not installed
"""


def run_light(code: str, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + code, *argv], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_the_sdk_imports_without_the_extras() -> None:
    done = run_light("""
import jobq
from jobq import JobqClient, SyncJobqClient, JobHandle, JobqError, JobSpec, __version__
from submitter import commands, dlq_commands, clibase
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("workers", "chaos", "devcluster")
                or m in ("broker.store", "broker.app", "broker.embedded.nats_tls", "broker.natsauth.keys"))
print("server modules loaded:", loaded)
""")
    assert done.returncode == 0, done.stderr
    assert "server modules loaded: []" in done.stdout


def test_the_cli_lists_every_command_and_names_the_extras() -> None:
    done = run_light("from submitter.cli import main; sys.argv[0] = 'jobq'; main()", "--help")
    assert done.returncode == 0, done.stderr
    for command in (
        "submit",
        "status",
        "list",
        "result",
        "logs",
        "cancel",
        "dlq",
        "schema",
        "watch",
        "up",
        "demo",
        "dispatcher",
        "node-agent",
        "kubelet",
        "chaos",
        "nats-auth",
        "dev-cluster",
    ):
        assert f"\n  {command} " in done.stdout, command
    assert "up, dispatcher, nats-auth, node-agent, demo: pip install 'jobq[server]'" in done.stdout
    assert "watch: pip install 'jobq[watch]'" in done.stdout


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["up"], "jobq[server]"),
        (["demo", "--jobs", "3"], "jobq[server]"),
        (["dispatcher"], "jobq[server]"),
        (["node-agent", "--name", "n1"], "jobq[server]"),
        (["nats-auth", "init", "/tmp/nowhere"], "jobq[server]"),
        (["kubelet", "--name", "k1"], "jobq[server,kubernetes]"),
        (["chaos", "list"], "jobq[server,chaos]"),
        (["dev-cluster", "status"], "jobq[server,kubernetes]"),
        (["watch", "--once"], "jobq[watch]"),
    ],
)
def test_a_server_command_without_its_extra_is_one_line_and_exit_2(argv: list[str], extra: str) -> None:
    done = run_light("from submitter.cli import main; sys.argv[0] = 'jobq'; main()", *argv)
    assert done.returncode == clibase.EXIT_USAGE, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"Error: jobq {argv[0]} needs ")
    assert f"pip install '{extra}'" in done.stderr


def test_an_import_of_a_missing_extra_elsewhere_is_one_line_too() -> None:
    error = extras.for_missing_module(ModuleNotFoundError("No module named 'sklearn'", name="sklearn.svm"))
    assert error is not None
    assert str(clibase.cli_error(error).message).endswith("pip install 'jobq[server]'")
    assert clibase.cli_error(ModuleNotFoundError("x", name="sklearn")).exit_code == clibase.EXIT_USAGE
    assert extras.for_missing_module(ModuleNotFoundError("x", name="not_an_extra")) is None


def test_a_client_command_runs_without_the_extras(tmp_path: Path) -> None:
    """`jobq list` down to connecting: finding the stack (stack.json, its CA and users), logging
    (stdlib, without structlog), the SDK; NATS is not there, which is one line and exit 4."""
    done = run_light(
        "from submitter.cli import main; sys.argv[0] = 'jobq'; main()",
        "--log-level",
        "DEBUG",
        "list",
        "--nats",
        "nats://127.0.0.1:1",
        cwd=tmp_path,
    )
    assert done.returncode == clibase.EXIT_UNREACHABLE, done.stderr
    assert "Traceback" not in done.stderr
    *logged, error = done.stderr.splitlines()
    assert error.startswith("Error: cannot reach NATS at nats://127.0.0.1:1")
    tried = [json.loads(line) for line in logged]  # JSON lines off a terminal, as with structlog
    # one stream: jobq's own events and the libraries' records (asyncio's, at DEBUG) alike
    seen = {(t["event"], t["level"], t["logger"]) for t in tried}
    assert ("nats_connect_failed", "debug", "jobq.nats") in seen, seen
    assert all({"event", "level", "logger", "timestamp"} <= t.keys() for t in tried), tried
