"""Retries, dead letters, timeouts and cancellation on the real embedded stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.conftest import cli_env, running_stack, submitter_client
from tests.integration.helpers import wait_running

FAST_RETRY = {"max_attempts": 3, "backoff_base_s": 0.5, "backoff_cap_s": 2.0}


async def test_task_that_fails_twice_then_succeeds(any_client: JobqClient) -> None:
    handle = await any_client.submit(task="demo.flaky", args={"succeed_on": 3}, retry=FAST_RETRY)
    record = await handle.wait(timeout=90)
    assert record.phase == contract.JobPhase.SUCCEEDED
    assert [a.reason for a in record.attempts] == ["app_error", "app_error", None]
    assert record.retries == {"app_error": 2} and record.result_attempt == 3
    assert (await handle.result()).attempt == 3
    # Backoff is full jitter under base * 2**(n-1), capped: the gaps stay within those bounds
    # (plus the time one reconcile pass takes to notice the exit and create the next pod).
    for n, (failed, following) in enumerate(zip(record.attempts, record.attempts[1:], strict=False), start=1):
        assert failed.finished_at is not None
        gap = (following.created_at - failed.finished_at).total_seconds()
        ceiling = min(FAST_RETRY["backoff_cap_s"], FAST_RETRY["backoff_base_s"] * 2 ** (n - 1))
        assert 0 <= gap <= ceiling + 1.5, (n, gap)
    kinds = [e.type for e in await any_client.events(handle.id, settled=True)]
    assert kinds.count("retry_scheduled") == 2 and kinds[-1] == "succeeded"


async def test_non_retryable_exit_code_goes_straight_to_dead(any_client: JobqClient) -> None:
    handle = await any_client.submit(
        task="demo.exit", args={"code": 42}, retry={**FAST_RETRY, "non_retryable_exit_codes": [42]}
    )
    record = await handle.wait(timeout=60)
    assert record.phase == contract.JobPhase.DEAD and record.reason == contract.FailureReason.NON_RETRYABLE
    assert len(record.attempts) == 1 and record.attempts[0].exit_code == 42
    letters = [letter for _, letter in await any_client.dead_letters() if letter.job_id == handle.id]
    assert len(letters) == 1 and letters[0].attempts[0].exit_code == 42


async def test_exhausted_retries_end_dead_and_can_be_redriven(
    any_stack: Stack, any_client: JobqClient
) -> None:
    handle = await any_client.submit(
        task="demo.exit", args={"code": 1}, retry={**FAST_RETRY, "max_attempts": 2}
    )
    record = await handle.wait(timeout=60)
    assert record.phase == contract.JobPhase.DEAD and len(record.attempts) == 2
    assert "max_attempts=2" in record.message
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "submitter.cli", "dlq", "list"],
        env=cli_env(any_stack),
        capture_output=True,
        text=True,
        check=True,
    )
    assert handle.id in listing.stdout
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "submitter.cli", "dlq", "retry", handle.id],
        env=cli_env(any_stack),
        capture_output=True,
        text=True,
        check=True,
    )
    for _ in range(100):
        again = await any_client.get(handle.id)
        if again is not None and again.phase.is_terminal and len(again.attempts) == 4:
            break
        await asyncio.sleep(0.2)
    assert again is not None and again.phase == contract.JobPhase.DEAD and len(again.attempts) == 4


async def test_deadline_kills_the_attempt_as_timeout(any_client: JobqClient) -> None:
    handle = await any_client.submit(
        task="demo.sleep", args={"seconds": 60}, timeout_s=1.5, retry={**FAST_RETRY, "max_attempts": 1}
    )
    record = await handle.wait(timeout=60)
    assert record.phase == contract.JobPhase.DEAD and record.reason == contract.FailureReason.TIMEOUT
    attempt = record.attempts[0]
    assert attempt.reason == contract.FailureReason.TIMEOUT and attempt.finished_at is not None


@pytest.fixture
async def held_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack whose queue 'held' may run nothing, so its jobs stay queued."""
    async with running_stack(tmp_path, nodes=1, env={"JOBQ_QUEUE_LIMITS": "held=0"}) as s:
        yield s


async def test_cancel_queued_and_running_jobs(held_stack: Stack) -> None:
    async with submitter_client(held_stack) as client:
        queued = await client.submit(task="demo.sleep", queue="held")
        running = await client.submit(task="demo.sleep", args={"seconds": 60})
        await wait_running(client, [running.id], count=1)
        record = await client.get(queued.id)
        assert record is not None and record.phase == contract.JobPhase.QUEUED
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "submitter.cli", "cancel", queued.id],
            env=cli_env(held_stack),
            capture_output=True,
            text=True,
            check=True,
        )
        assert "cancellation requested" in out.stdout
        await client.cancel(running.id)
        done = await client.wait([queued.id, running.id], timeout=30)
    assert done[queued.id].phase == contract.JobPhase.CANCELLED and not done[queued.id].attempts
    cancelled = done[running.id]
    assert cancelled.phase == contract.JobPhase.CANCELLED
    assert cancelled.attempts[0].reason == contract.FailureReason.CANCELLED
