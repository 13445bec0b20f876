"""Every `jobq` command fails the same way: one line on stderr, a documented exit code, never a
traceback. The real CLI runs as a subprocess, against a real stack and against no NATS at all."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter import cli
from submitter.client import JobqClient
from tests.conftest import cli_env

JOBQ = [sys.executable, "-m", "submitter.cli"]
NO_NATS = "nats://127.0.0.1:1"

NEEDS_NATS: list[list[str]] = [
    ["status", "nope"],
    ["status", "nope", "--json"],
    ["list"],
    ["result", "nope"],
    ["result", "nope", "--wait", "--timeout", "1"],
    ["cancel", "nope"],
    ["logs", "nope"],
    ["logs", "nope", "--follow"],
    ["dlq", "list"],
    ["dlq", "retry", "nope"],
    ["dlq", "original", "999999"],
    ["dlq", "show", "999999"],
    ["artifacts", "list", "nope"],
    ["artifacts", "get", "nope", "model.pkl"],
    ["submit", "--task", "demo.sleep"],
    ["submit", "--task", "demo.sleep", "--wait", "--timeout", "1"],
]
"""Commands that talk to NATS, each with an unknown job id where it takes one."""
UNKNOWN_ID = [c for c in NEEDS_NATS if "nope" in c]
NEEDS_HTTP = [["watch", "--once", "--url", "http://127.0.0.1:1/"]]
NOT_CLIENTS = {
    "up", "demo", "dispatcher", "node-agent", "kubelet", "schema", "chaos list", "chaos run",
    "dev-cluster up", "dev-cluster down", "dev-cluster kubeconfig", "dev-cluster status", "dev-cluster build",
    "nats-auth init", "nats-auth node-token",
}
"""Servers, local tools and commands that reach no NATS given by the user: not in the tables."""


def _leaves(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        found += _leaves(command, path + " ") if isinstance(command, click.Group) else [path]
    return found


def test_the_tables_cover_every_command() -> None:
    covered = {" ".join(c[: 2 if c[0] in ("dlq", "artifacts") else 1]) for c in NEEDS_NATS + NEEDS_HTTP}
    assert set(_leaves(cli.cli)) == covered | NOT_CLIENTS


async def jobq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*JOBQ, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(
    out: subprocess.CompletedProcess[str], code: int, *, says: str = "", command: object = ""
) -> None:
    where = f"{command}: exit {out.returncode}\nstdout: {out.stdout[-2000:]}\nstderr: {out.stderr[-2000:]}"
    assert out.returncode == code, where
    assert "Traceback" not in out.stderr + out.stdout, where
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), where
    assert says in lines[0], where


def no_nats_env() -> dict[str, str]:
    return {**os.environ, "JOBQ_NATS_URL": NO_NATS, "JOBQ_LOG_FORMAT": "json"}


@pytest.mark.timeout(180)
async def test_every_client_command_says_once_that_nats_is_unreachable() -> None:
    outs = await asyncio.gather(*(jobq(*c, env=no_nats_env()) for c in NEEDS_NATS))
    for command, out in zip(NEEDS_NATS, outs, strict=True):
        assert_one_line_error(
            out, cli.EXIT_UNREACHABLE, says=f"cannot reach NATS at {NO_NATS}", command=command
        )
    console = {**os.environ, "JOBQ_LOG_FORMAT": "console"}
    explicit = await jobq("status", "nope", "--nats", NO_NATS, env=console)
    assert_one_line_error(explicit, cli.EXIT_UNREACHABLE, says="cannot reach NATS")


async def test_refused_credentials_are_said_as_such(stack: Stack) -> None:
    """The stack's NATS has users: no credentials, or a wrong password, is not "unreachable"."""
    own = (contract.ENV_NATS_USER, contract.ENV_NATS_PASSWORD_FILE)
    env = {k: v for k, v in cli_env(stack).items() if k not in own}
    for extra in ({}, {contract.ENV_NATS_USER: "jobq-submitter", contract.ENV_NATS_PASSWORD: "wrong"}):
        out = await jobq("status", "nope", env={**env, **extra})
        says = "refused this client's credentials"
        assert_one_line_error(out, cli.EXIT_UNREACHABLE, says=says, command=extra)
    out = await jobq("status", "nope", env=cli_env(stack))
    assert_one_line_error(out, cli.EXIT_NOT_FOUND, says="no job nope")


async def test_watch_says_once_that_the_dispatcher_is_unreachable() -> None:
    for command in NEEDS_HTTP:
        out = await jobq(*command, env=no_nats_env())
        assert_one_line_error(out, cli.EXIT_UNREACHABLE, says="cannot read http://127.0.0.1:1/")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["submit", "--task", "demo.sleep", "--args", "{bad"], "Invalid value for --args: not JSON"),
        (["submit", "--task", "demo.sleep", "--args", "[1]"], "args: Input should be a valid dictionary"),
        (["submit", "--task", "no.such"], "unknown task 'no.such'"),
        (["submit", "--task", "demo.sleep", "--timeout", "5"], "give --wait too"),
        (["result", "x", "--timeout", "5"], "give --wait too"),
        (["submit", "--task", "demo.sleep", "--wait", "--timeout", "0"], "--timeout"),
        (["status"], "Missing argument"),
        (["no-such-command"], "No such command"),
        (["dlq", "nope"], "No such command"),
    ],
)
async def test_bad_command_lines_are_one_line_and_exit_2_without_touching_nats(
    args: list[str], says: str
) -> None:
    assert_one_line_error(await jobq(*args, env=no_nats_env()), cli.EXIT_USAGE, says=says)


@pytest.mark.parametrize("command", [["up"], ["demo", "--jobs", "4"]])
@pytest.mark.parametrize("setting", ["JOBQ_NATS_AUTH", "JOBQ_NATS_TLS"])
async def test_a_bad_stack_switch_is_a_usage_error(command: list[str], setting: str, tmp_path: Path) -> None:
    env = {**no_nats_env(), setting: "maybe"}
    out = await jobq(*command, "--data-dir", str(tmp_path), env=env)
    assert_one_line_error(out, cli.EXIT_USAGE, says=f"{setting}='maybe': use 'on'", command=command)


async def test_a_job_over_the_size_limit_is_refused_before_sending(tmp_path: Path) -> None:
    big = tmp_path / "args.json"
    big.write_text(json.dumps({"data": "x" * contract.MAX_SUBMISSION_BYTES}))
    out = await jobq("submit", "--task", "demo.echo_size", "--args", f"@{big}", env=no_nats_env())
    assert_one_line_error(out, cli.EXIT_USAGE, says=f"the limit is {contract.MAX_SUBMISSION_BYTES}")
    missing = await jobq("submit", "--task", "demo.echo_size", "--args", f"@{tmp_path}/nope.json",
                         env=no_nats_env())
    assert_one_line_error(missing, cli.EXIT_USAGE, says="--args")


# --- against a real stack -----------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_unknown_job_ids_exit_3_on_every_command(stack: Stack) -> None:
    outs = await asyncio.gather(*(jobq(*c, env=cli_env(stack)) for c in UNKNOWN_ID if "--wait" not in c))
    for command, out in zip([c for c in UNKNOWN_ID if "--wait" not in c], outs, strict=True):
        assert_one_line_error(out, cli.EXIT_NOT_FOUND, says="no job nope", command=command)
    out = await jobq("result", "nope", "--wait", "--timeout", "1", env=cli_env(stack))
    assert_one_line_error(out, cli.EXIT_NOT_FOUND, says="no job nope")


@pytest.mark.timeout(180)
async def test_wait_timeout_exits_5_and_the_job_goes_on(stack: Stack, client: JobqClient) -> None:
    env = cli_env(stack)
    out = await jobq("submit", "--task", "demo.sleep", "--args", '{"seconds": 4}', "--id", "slow-one",
                     "--wait", "--timeout", "0.5", env=env)
    assert_one_line_error(out, cli.EXIT_TIMEOUT, says="job slow-one not finished after 0.5s; it goes on")
    out = await jobq("result", "slow-one", "--wait", "--timeout", "0.5", env=env)
    assert_one_line_error(out, cli.EXIT_TIMEOUT, says="it goes on")
    record = await client.get("slow-one")
    assert record is not None and not record.phase.is_terminal and not record.cancel_requested
    # Waiting long enough prints the result, and nothing on stderr.
    done = await jobq("result", "slow-one", "--wait", "--timeout", "60", env=env)
    assert done.returncode == 0 and '"slept_s": 4.0' in done.stdout and done.stderr == "", done.stderr


@pytest.mark.timeout(180)
async def test_a_job_that_ends_dead_exits_1_with_one_line(stack: Stack) -> None:
    env = cli_env(stack)
    out = await jobq("submit", "--task", "demo.exit", "--args", '{"code": 3}', "--id", "dies",
                     "--wait", "--timeout", "60", env=env)
    assert_one_line_error(out, cli.EXIT_FAILED, says="job dies ended dead")
    out = await jobq("result", "dies", env=env)
    assert_one_line_error(out, cli.EXIT_FAILED, says="job dies ended dead")
    cancel = await jobq("cancel", "dies", env=env)
    assert cancel.returncode == 0 and "already finished" in cancel.stdout and cancel.stderr == ""
