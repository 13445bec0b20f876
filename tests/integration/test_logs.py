"""Failure output is kept: `jobq status` shows a failed attempt's last lines, `jobq logs` prints an
attempt's output (or, once its log is gone, the lines jobq kept), `--follow` streams a running
job. On both backends: local node agents (which keep pod logs on disk) and the real Kubernetes
control plane (where a log lives as long as its pod, and the kubelet keeps a failed container's
last lines in its termination message)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from broker import contract
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack
from submitter import client as client_module
from submitter.client import JobNotFound, JobqClient, new_job_id
from tests.conftest import cli_env

JOBQ = [sys.executable, "-m", "submitter.cli"]
FAILS = ["sh", "-c", "echo line-1; echo line-2; exit 3"]
FAILS_ONCE = ["sh", "-c",
              'echo "attempt $JOBQ_ATTEMPT"; [ "$JOBQ_ATTEMPT" -ge 2 ] || { echo boom >&2; exit 3; }']
TICKS = ["sh", "-c", "sleep 1; for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.5; done"]


async def jobq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*JOBQ, *args], env=env, capture_output=True,
                                   text=True, timeout=60)


def kubernetes(stack: Stack) -> bool:
    return stack.config.env.get("JOBQ_BACKEND") == "kubernetes"


async def test_failed_output_in_status_logs_and_the_api(any_stack: Stack, any_client: JobqClient) -> None:
    env = cli_env(any_stack)
    dead = await any_client.submit(command=FAILS, retry={"max_attempts": 1})
    retried = await any_client.submit(command=FAILS_ONCE,
                                      retry={"max_attempts": 2, "backoff_base_s": 0.2, "backoff_cap_s": 0.5})
    records = await any_client.wait([dead.id, retried.id], timeout=120)
    assert records[dead.id].phase == contract.JobPhase.DEAD
    assert records[dead.id].attempts[0].log_tail == "line-1\nline-2"
    assert records[retried.id].phase == contract.JobPhase.SUCCEEDED
    assert [a.log_tail for a in records[retried.id].attempts] == ["attempt 1\nboom", ""]

    status = await jobq(env, "status", dead.id)
    assert status.returncode == 0, status.stderr
    assert "exit=3" in status.stdout
    assert "    last output:\n      | line-1\n      | line-2\n" in status.stdout, status.stdout

    # The dead job's output: the whole log (local), or the kept tail with a note (Kubernetes).
    logs = await jobq(env, "logs", dead.id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["line-1", "line-2"], logs.stdout
    if kubernetes(any_stack):
        assert "gone" in logs.stderr and "last lines jobq kept" in logs.stderr, logs.stderr

    # An earlier attempt of a job that succeeded on retry.
    first = await jobq(env, "logs", retried.id, "--attempt", "1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["attempt 1", "boom"], first.stdout
    current = await jobq(env, "logs", retried.id)
    if kubernetes(any_stack):  # the succeeded pod is deleted, and nothing is kept of a success
        assert current.returncode == 1 and "no output was kept" in current.stderr, current.stderr
    else:
        assert (current.returncode, current.stdout) == (0, "attempt 2\n"), current.stderr
    missing = await jobq(env, "logs", retried.id, "--attempt", "3")
    assert missing.returncode == 1 and "has no attempt 3 (it has 2)" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    for args in (["logs", "no-such-job"], ["logs", "no-such-job", "--follow"]):
        unknown = await jobq(env, *args)
        assert (unknown.returncode, unknown.stdout) == (3, "")  # cli.EXIT_NOT_FOUND
        assert unknown.stderr.strip() == "Error: no job no-such-job", unknown.stderr

    # The HTTP API answers the same chunks.
    async with aiohttp.ClientSession(headers=any_stack.http_headers) as http:
        async with http.get(f"{any_stack.http_url}api/jobs/{retried.id}/log?attempt=1&offset=2") as r:
            assert r.status == 200
            chunk = contract.LogChunk.model_validate(await r.json())
        assert chunk.attempt == 1 and chunk.finished
        if kubernetes(any_stack):
            assert chunk.tail == "attempt 1\nboom" and chunk.error
        else:
            assert (chunk.data, chunk.offset, chunk.next_offset) == ("tempt 1\nboom\n", 2, 15)
        async with http.get(f"{any_stack.http_url}api/jobs/{retried.id}/log?attempt=9") as r:
            assert r.status == 404 and (await r.json())["param"] == "attempt"
        async with http.get(f"{any_stack.http_url}api/jobs/nope/log") as r:
            assert r.status == 404
        async with http.get(f"{any_stack.http_url}api/jobs/{dead.id}/log?offset=-1") as r:
            assert r.status == 400 and (await r.json())["param"] == "offset"
        async with http.get(f"{any_stack.http_url}api/jobs/{dead.id}") as r:
            assert (await r.json())["attempts"][0]["log_tail"] == "line-1\nline-2"


async def test_follow_streams_a_running_job_until_it_ends(any_stack: Stack, any_client: JobqClient) -> None:
    handle = await any_client.submit(command=TICKS)
    process = await asyncio.create_subprocess_exec(
        *JOBQ, "logs", handle.id, "--follow", env=cli_env(any_stack),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    lines: list[tuple[str, float]] = []
    try:
        async with asyncio.timeout(120):
            while line := await process.stdout.readline():
                lines.append((line.decode().rstrip("\n"), time.monotonic()))
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = (await process.stderr.read()).decode()
    record = await any_client.wait([handle.id], timeout=30)
    assert record[handle.id].phase == contract.JobPhase.SUCCEEDED
    assert code == 0, stderr
    texts = [text for text, _ in lines]
    if kubernetes(any_stack):
        # The pod is deleted once it succeeded: the last lines may be read or may be gone.
        assert texts == [f"tick-{i}" for i in range(1, len(texts) + 1)] and len(texts) >= 4, (texts, stderr)
    else:
        assert texts == [f"tick-{i}" for i in range(1, 7)], (texts, stderr)
    # Streamed as written (0.5 s apart), not printed all at once at the end.
    assert lines[3][1] - lines[0][1] > 1.0, lines
    assert "Traceback" not in stderr


async def test_logs_without_a_dispatcher_is_one_line_and_exit_4(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    await server.start()
    try:
        result = await jobq({**os.environ, "JOBQ_NATS_URL": server.url, "JOBQ_LOG_FORMAT": "json"},
                            "logs", "some-job")
    finally:
        await server.stop()
    assert result.returncode == 4, result  # cli.EXIT_UNREACHABLE
    assert result.stderr.strip().startswith("Error: no dispatcher answers on jobq.logs"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_follow_waits_for_a_job_published_a_moment_ago(
        stack: Stack, client: JobqClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower started before the dispatcher has recorded the job (here: before it is even
    published) waits for the record instead of saying "no job"; an id that never gets a record
    is JobNotFound once the grace is over. The grace is shortened to 3 s: its length is not
    what is tested."""
    monkeypatch.setattr(client_module, "RECORD_GRACE_S", 3.0)
    job_id = new_job_id()

    async def follow() -> str:
        return "".join([data async for data in client.logs(job_id, follow=True, poll_s=0.2)])

    follower = asyncio.create_task(follow())
    await asyncio.sleep(1.0)
    assert not follower.done()
    await client.submit(id=job_id, command=["sh", "-c", "echo one; echo two"])
    assert await asyncio.wait_for(follower, 60) == "one\ntwo\n"

    started = time.monotonic()
    with pytest.raises(JobNotFound):
        await client.logs(new_job_id(), follow=True, poll_s=0.2).__anext__()
    assert time.monotonic() - started >= 3.0
    with pytest.raises(JobNotFound):  # without --follow, at once
        await client.logs(new_job_id()).__anext__()
