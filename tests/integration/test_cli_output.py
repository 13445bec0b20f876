"""What the `jobq` commands print: one -o table|json|yaml on every command that prints data,
tables with a header, `jobq list` newest first like the API, jobs from a file or after `--`.
The real CLI runs as a subprocess against a real stack; what it prints is checked against what
NATS holds (the SDK) and what the HTTP API answers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter import clibase
from submitter.client import JobqClient
from tests.conftest import cli_env

yaml = pytest.importorskip("yaml")  # only to read what `-o yaml` wrote (the CLI writes it itself)

JOBQ = [sys.executable, "-m", "submitter.cli"]


async def jobq(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*JOBQ, *args], env=env, input=stdin,
                                   capture_output=True, text=True, timeout=90)


async def ok(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    out = await jobq(*args, env=env, stdin=stdin)
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stderr[-2000:]}"
    return out.stdout


@pytest.mark.timeout(240)
async def test_every_format_says_what_nats_holds(stack: Stack, client: JobqClient, tmp_path: Path) -> None:
    env = cli_env(stack)
    # Three jobs: from a file, from stdin (options override the file), and a command after --.
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"id": "from-file", "task": "demo.sleep", "args": {"seconds": 0.1},
                                    "labels": {"team": "ml"}, "retry": {"max_attempts": 2}}))
    assert (await ok("submit", "-f", str(job_file), env=env)).strip() == "from-file"
    stdin_job = json.dumps({"task": "demo.sleep", "args": {"seconds": 0.1}, "queue": "q1"})
    assert (await ok("submit", "-f", "-", "--id", "from-stdin", "--max-attempts", "4", "-o", "json",
                     env=env, stdin=stdin_job)) == '{\n  "id": "from-stdin"\n}\n'
    await ok("submit", "--id", "a-command", "--wait", "--", sys.executable, "-c",
             "import sys; print(sys.argv[1:])", "--not-an-option", "two words", env=env)
    records = await client.wait(["from-file", "from-stdin", "a-command"], timeout=90)
    assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}
    assert records["from-file"].spec.labels == {"team": "ml"}
    assert records["from-file"].spec.retry is not None and records["from-file"].spec.retry.max_attempts == 2
    stdin_spec = records["from-stdin"].spec
    assert stdin_spec.queue == "q1" and stdin_spec.retry is not None and stdin_spec.retry.max_attempts == 4
    assert records["a-command"].spec.command == (sys.executable, "-c", "import sys; print(sys.argv[1:])",
                                                 "--not-an-option", "two words")

    # list: newest first, in the HTTP API's order; a header; json and yaml hold the same records.
    async with aiohttp.ClientSession(headers=stack.http_headers) as http, \
            http.get(f"{stack.http_url}api/jobs") as response:
        api_order = [job["id"] for job in (await response.json())["jobs"]]
    as_json = json.loads(await ok("list", "-o", "json", env=env))
    assert [r["spec"]["id"] for r in as_json] == api_order
    newest_first = sorted(await client.list(), key=lambda r: (r.submitted_at, r.spec.id), reverse=True)
    assert [r["spec"]["id"] for r in as_json] == [r.spec.id for r in newest_first]
    assert yaml.safe_load(await ok("list", "-o", "yaml", env=env)) == as_json
    table = (await ok("list", env=env)).splitlines()
    assert table[0].split() == ["ID", "PHASE", "QUEUE", "NODE#ATTEMPT", "SUBMITTED", "TASK", "REASON"]
    assert [line.split()[0] for line in table[1:]] == api_order
    assert (await ok("list", "--limit", "1", "--queue", "default", "-o", "json", env=env)) == \
        json.dumps([r for r in as_json if r["spec"]["queue"] == "default"][:1], indent=2) + "\n"

    # status: the human view, the whole record in json (also with the old --json) and yaml.
    record = json.loads(await ok("status", "from-file", "-o", "json", env=env))
    progress = await client.progress("from-file")  # the record, with its current attempt's progress
    assert progress is not None and progress.fraction == 1.0
    assert record == {
        **(await client.get("from-file")).model_dump(mode="json"),  # type: ignore[union-attr]
        "progress": progress.model_dump(mode="json"),
        "checkpoint": None,  # it ended (and never checkpointed): its attempts carry their checkpoints
    }
    assert json.loads(await ok("status", "from-file", "--json", env=env)) == record
    assert yaml.safe_load(await ok("status", "from-file", "-o", "yaml", env=env)) == record
    shown = await ok("status", "from-file", env=env)
    assert shown.startswith("from-file: succeeded\n  progress: 100% done (attempt 1, at "), shown
    assert "\n  attempt 1: " in shown, shown

    # result: JSON by default (as before), yaml, and a FIELD/VALUE table.
    result = json.loads(await ok("result", "from-file", env=env))
    assert result == (await client.result_of(records["from-file"])).model_dump(mode="json")
    assert yaml.safe_load(await ok("result", "from-file", "-o", "yaml", env=env)) == result
    rows = (await ok("result", "from-file", "-o", "table", env=env)).splitlines()
    assert rows[0].split() == ["FIELD", "VALUE"] and rows[1].split() == ["job_id", "from-file"]


@pytest.mark.timeout(240)
async def test_dead_letters_in_every_format(stack: Stack, client: JobqClient) -> None:
    env = cli_env(stack)
    await ok("submit", "--id", "dies", "--task", "demo.exit", "--args", '{"code": 3}', "--max-attempts", "1",
             env=env)
    assert (await client.wait(["dies"], timeout=90))["dies"].phase == contract.JobPhase.DEAD
    stored = await client.dead_letters()
    letters = json.loads(await ok("dlq", "list", "-o", "json", env=env))
    assert letters == [{"seq": seq, **letter.model_dump(mode="json")} for seq, letter in stored]
    assert yaml.safe_load(await ok("dlq", "list", "-o", "yaml", env=env)) == letters
    table = (await ok("dlq", "list", env=env)).splitlines()
    assert table[0].split() == ["SEQ", "JOB", "REASON", "AT", "MESSAGE"]
    assert table[1].split()[:3] == [str(stored[0][0]), "dies", str(stored[0][1].reason)]
    seq = str(stored[0][0])
    assert json.loads(await ok("dlq", "show", seq, "-o", "json", env=env)) == letters[0]
    assert yaml.safe_load(await ok("dlq", "show", seq, "-o", "yaml", env=env)) == letters[0]
    shown = (await ok("dlq", "show", seq, env=env)).splitlines()
    assert shown[0].split() == ["FIELD", "VALUE"] and shown[1].split() == ["seq", seq]
    for command in (["dlq", "show", "999999"], ["dlq", "original", "999999"]):
        missing = await jobq(*command, env=env)
        assert missing.returncode == clibase.EXIT_NOT_FOUND, missing
        assert missing.stderr == "Error: no dead letter 999999\n"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"task": "demo.sleep", "retry": {"max_attempts": "x"}, "colour": 1}',
         "invalid job: retry.max_attempts: Input should be a valid integer, unable to parse string as an "
         "integer; colour: Extra inputs are not permitted"),
        ('{"task": "demo.sleep", "priority": NaN}', "Invalid value for -f: not JSON: NaN is not JSON"),
        ("[1]", "holds a JSON list, not a job"),
        ('{"task": "demo.sleep"', "Invalid value for -f: not JSON"),
    ],
)
async def test_a_bad_job_file_is_one_line_naming_the_field(content: str, says: str, tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(content)
    no_nats = {**cli_env_without_stack(), "JOBQ_NATS_URL": "nats://127.0.0.1:1"}
    out = await jobq("submit", "-f", str(path), env=no_nats)
    assert out.returncode == clibase.EXIT_USAGE and out.stdout == "", out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("Error: ") and says in out.stderr, out.stderr


async def test_version_and_the_exit_code_table() -> None:
    env = cli_env_without_stack()
    version = await ok("--version", env=env)
    assert version == f"jobq {clibase.version_text().split()[1]} (contract {contract.CONTRACT_VERSION})\n"
    assert version.split()[1][0].isdigit()  # the installed package's version, not "unknown"
    help_text = await ok("--help", env=env)
    for code, meaning in clibase.EXIT_CODES:
        assert f"  {code}  {meaning}" in help_text
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("**Errors and exit codes.**")[1].split("\n\n")[1]
    codes = [int(line.split("|")[1]) for line in table.splitlines()[2:]]
    assert codes == [code for code, _ in clibase.EXIT_CODES]


def cli_env_without_stack() -> dict[str, str]:
    import os

    return {**os.environ, "JOBQ_LOG_FORMAT": "json"}
