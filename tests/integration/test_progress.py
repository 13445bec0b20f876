"""Progress end to end against real servers: what a task reports (``ctx.progress``) is stored by
its own pod in KV ``jobq_progress``, throttled, and shown by the SDK, the API and `jobq status`;
only the job's current attempt's progress ever shows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import aiohttp
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from broker import contract
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack
from submitter.client import JobNotFound, JobqClient
from tests.conftest import cli_env
from tests.integration.helpers import wait_running
from workers import heartbeat, progress

JOBQ = [sys.executable, "-m", "submitter.cli"]


async def jobq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*JOBQ, *args], env=env, capture_output=True, text=True, timeout=60
    )


async def stored(nc: NATS, job_id: str, attempt: int) -> contract.AttemptProgress | None:
    """What KV jobq_progress holds for the attempt: the evidence the readers are judged by."""
    kv = await nc.jetstream().key_value(contract.BUCKET_PROGRESS)
    try:
        entry = await kv.get(contract.progress_key(job_id, attempt))
    except nats.js.errors.KeyNotFoundError:
        return None
    return contract.AttemptProgress.model_validate_json(entry.value or b"")


async def forge(nc: NATS, value: contract.AttemptProgress, *, key: str) -> None:
    """Write a progress value as the operator (a stale pod may write its own key; the operator
    stands in for it, and for a server without jobq's users, which cannot refuse other keys)."""
    kv = await nc.jetstream().key_value(contract.BUCKET_PROGRESS)
    await kv.put(key, value.model_dump_json().encode())


async def api_job(stack: Stack, job_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=stack.http_headers) as http,
        http.get(f"{stack.http_url}api/jobs/{job_id}") as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = (await response.json())["job"]
        return body


async def api_list(stack: Stack, query: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=stack.http_headers) as http,
        http.get(f"{stack.http_url}api/jobs?{query}") as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_progress_of_a_running_job_in_the_sdk_the_api_and_jobq_status(
    stack: Stack, client: JobqClient
) -> None:
    assert stack.nc is not None
    handle = await client.submit(task="demo.sleep", args={"seconds": 40, "progress_steps": 20})
    await wait_running(client, [handle.id], count=1)

    # The pod stores its first report (2 s into the task) within its 2 s write interval.
    deadline = time.monotonic() + 30
    while (kept := await stored(stack.nc, handle.id, 1)) is None:
        assert time.monotonic() < deadline, "no progress stored"
        await asyncio.sleep(0.2)
    assert 0 < kept.fraction < 1 and kept.message.startswith("slept "), kept

    # Every reader shows what is stored (a later report may have been stored meanwhile).
    seen = await client.progress(handle.id)
    assert seen is not None and seen.attempt == 1 and seen.fraction >= kept.fraction
    status = await client.status(handle.id)
    assert status is not None and status.phase == contract.JobPhase.RUNNING
    assert status.progress is not None and status.progress.attempt == 1
    assert (await handle.progress()) is not None

    detail = await api_job(stack, handle.id)
    assert detail["progress"]["attempt"] == 1 and 0 < detail["progress"]["fraction"] < 1
    assert detail["progress"]["message"].startswith("slept ")
    listed = await api_list(stack, "state=running")
    (row,) = [j for j in listed["jobs"] if j["id"] == handle.id]
    assert row["progress"]["attempt"] == 1 and row["progress"]["fraction"] > 0

    shown = await jobq(cli_env(stack), "status", handle.id)
    assert shown.returncode == 0, shown.stderr
    (line,) = [ln for ln in shown.stdout.splitlines() if ln.startswith("  progress: ")]
    assert "% slept " in line and "(attempt 1, at " in line, shown.stdout

    watched = await asyncio.to_thread(
        subprocess.run,
        [*JOBQ, "watch", "--once", "--url", stack.http_url],
        env={**cli_env(stack), "COLUMNS": "200", "JOBQ_HTTP_TOKEN": stack.http_token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watched.returncode == 0, watched.stderr
    (row_line,) = [ln for ln in watched.stdout.splitlines() if handle.id in ln]
    assert "Running jobs (1 of 1)" in watched.stdout and "% slept " in row_line, watched.stdout

    await client.cancel(handle.id)
    await client.wait([handle.id], timeout=60)
    with pytest.raises(JobNotFound):
        await client.progress("no-such-job")


async def test_a_finished_attempt_stores_its_last_report_and_writes_are_throttled(
    stack: Stack, client: JobqClient
) -> None:
    """A task reporting 200 times in 3 s costs a handful of writes, and its end is stored."""
    assert stack.nc is not None
    handle = await client.submit(task="demo.sleep", args={"seconds": 3, "progress_steps": 200})
    kv = await stack.nc.jetstream().key_value(contract.BUCKET_PROGRESS)
    watcher = await kv.watch(contract.progress_key(handle.id, 1))
    writes: list[float] = []

    async def count() -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                writes.append(time.monotonic())
                if contract.AttemptProgress.model_validate_json(entry.value).message == "done":
                    return

    counting = asyncio.create_task(count())
    try:
        record = (await client.wait([handle.id], timeout=60))[handle.id]
        assert record.phase == contract.JobPhase.SUCCEEDED
        # The pod stored its last value before it exited, so before its result was accepted.
        await asyncio.wait_for(asyncio.shield(counting), 10)
    finally:
        counting.cancel()
        await watcher.stop()
    last = await stored(stack.nc, handle.id, 1)
    assert last is not None and (last.fraction, last.message) == (1.0, "done")
    assert await client.progress(handle.id) == last
    # At most one write per 2 s (the documented interval), plus the final flush.
    span = writes[-1] - writes[0]
    assert len(writes) <= 2 + span / 2.0, (len(writes), span)


async def test_only_the_current_attempts_progress_shows(stack: Stack, client: JobqClient) -> None:
    assert stack.nc is not None
    handle = await client.submit(
        task="demo.flaky",
        args={"succeed_on": 2},
        retry={"max_attempts": 2, "backoff_base_s": 0.2, "backoff_cap_s": 0.5},
    )
    record = (await client.wait([handle.id], timeout=90))[handle.id]
    assert record.phase == contract.JobPhase.SUCCEEDED and record.current is not None
    assert record.current.number == 2
    current = await stored(stack.nc, handle.id, 2)
    assert current is not None and current.fraction == 1.0

    # Attempt 1 (superseded) writes its own key after attempt 2 ended: it never shows.
    stale = contract.AttemptProgress(job_id=handle.id, attempt=1, fraction=0.25, message="stale")
    await forge(stack.nc, stale, key=contract.progress_key(handle.id, 1))
    assert await stored(stack.nc, handle.id, 1) == stale
    assert await client.progress(handle.id) == current
    assert (await api_job(stack, handle.id))["progress"]["message"] == "done"
    shown = await jobq(cli_env(stack), "status", handle.id)
    assert "progress: 100% done (attempt 2," in shown.stdout and "stale" not in shown.stdout, shown.stdout

    # A value under the current key that names another attempt is not the current attempt's.
    await forge(stack.nc, stale, key=contract.progress_key(handle.id, 2))
    assert await client.progress(handle.id) is None
    assert (await api_job(stack, handle.id))["progress"] is None

    # Hostile bytes under the current key (a pod that bypasses the runner may write its own key):
    # every reader shows no progress, and keeps serving.
    kv = await stack.nc.jetstream().key_value(contract.BUCKET_PROGRESS)
    key = contract.progress_key(handle.id, 2)
    too_long = stale.model_copy(
        update={"attempt": 2, "message": "x" * (contract.MAX_PROGRESS_MESSAGE_CHARS + 1)}
    )
    for hostile in (b"", b"\xff\xfe not json", b"[" * 4000, b'{"fraction": NaN}',
                    too_long.model_dump_json().encode()):
        await kv.put(key, hostile)
        assert await client.progress(handle.id) is None, hostile[:40]
        assert (await api_job(stack, handle.id))["progress"] is None, hostile[:40]
        shown = await jobq(cli_env(stack), "status", handle.id)
        assert shown.returncode == 0 and "progress:" not in shown.stdout, (hostile[:40], shown.stderr)
    # ... and the server refuses a value bigger than the bucket allows: nothing of it is stored.
    with pytest.raises(nats.js.errors.APIError):
        await kv.put(key, b" " * (contract.PROGRESS_MAX_VALUE_BYTES + 1))


async def test_the_writer_stores_only_changes(nats_server: NatsServer, nc: NATS) -> None:
    js = nc.jetstream()
    reporter = heartbeat.ProgressReporter()
    writer = progress.ProgressWriter(js, job_id="pw", attempt=3, progress=reporter)
    await writer.flush()
    assert writer.writes == 0  # nothing reported yet: nothing stored (the bucket is made on first use)
    reporter.report(0.5, "half")
    reporter.report(0.6, "more")
    await writer.flush()
    await writer.flush()
    kept = await stored(nc, "pw", 3)
    assert writer.writes == 1 and kept is not None
    assert (kept.job_id, kept.attempt, kept.fraction, kept.message) == ("pw", 3, 0.6, "more")
    reporter.report(0.6, "more")  # the same again: no write
    await writer.flush()
    assert writer.writes == 1
    reporter.report(2.0, "over")  # clamped
    await writer.flush()
    kept = await stored(nc, "pw", 3)
    assert writer.writes == 2 and kept is not None and (kept.fraction, kept.message) == (1.0, "over")
