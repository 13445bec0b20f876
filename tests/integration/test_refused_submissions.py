"""A job the operator's policy refuses (JOBQ_QUEUE_POLICY) gets a dead letter and no record: the
SDK's ``wait`` ends with JobRefused as soon as the letter is there (published before or during the
wait), a normal job in the same wait goes on, and the CLI says so in one line with exit 6
(``submit --wait``, ``status``, ``result``). Against a real stack with a closed policy (the tests'
FAST_ENV opens every queue)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from broker import contract
from submitter import clibase
from submitter.client import JobqClient, JobRefused
from tests.conftest import cli_env, running_stack, submitter_client
from tests.integration.test_cli_errors import assert_one_line_error, jobq

CLOSED = {"JOBQ_QUEUE_POLICY": json.dumps({"*": {"commands": False}})}
WHY = "queue default: command jobs are not allowed (JOBQ_QUEUE_POLICY *.commands=false)"


async def letter_seq(client: JobqClient, job_id: str, *, timeout: float = 15) -> int:
    """The stream sequence of the refusal letter naming ``job_id``, once it is published."""
    deadline = time.monotonic() + timeout
    while True:
        for seq, letter in await client.dead_letters():
            if letter.job_id == job_id and letter.reason == contract.FailureReason.REFUSED:
                return seq
        assert time.monotonic() < deadline, f"no refused dead letter for {job_id}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_wait_raises_job_refused_and_the_other_jobs_go_on(tmp_path: Path) -> None:
    async with running_stack(tmp_path, env=CLOSED) as stack, submitter_client(stack) as client:
        # Refused during the wait: the live subscription hears it.
        fine = await client.submit(task="demo.sleep", args={"seconds": 1}, id="fine-job")
        waiting = asyncio.create_task(client.wait(["fine-job", "live-refused"], timeout=60))
        await asyncio.sleep(0.5)
        await client.submit(command=["true"], id="live-refused")
        with pytest.raises(JobRefused) as caught:
            await waiting
        refused = caught.value
        assert (refused.job_id, str(refused), refused.letter.reason) == (
            "live-refused",
            WHY,
            contract.FailureReason.REFUSED,
        )
        assert refused.seq == await letter_seq(client, "live-refused")
        assert set(refused.pending) | set(refused.done) == {"fine-job"}
        assert await client.get("live-refused") is None
        # The other job goes on and finishes as ever.
        assert (await fine.wait(timeout=60)).phase == contract.JobPhase.SUCCEEDED

        # Refused before the wait began: read back from the stream.
        await client.submit(command=["true"], id="early-refused")
        seq = await letter_seq(client, "early-refused")
        with pytest.raises(JobRefused) as caught:
            await client.wait(["early-refused"], timeout=30)
        assert (caught.value.job_id, caught.value.seq, str(caught.value)) == ("early-refused", seq, WHY)
        # Refused before the wait began, behind a later refusal: found by the read-back.
        await client.submit(command=["true"], id="older-refused")
        older = await letter_seq(client, "older-refused")
        await client.submit(command=["false"], id="newer-refused")
        await letter_seq(client, "newer-refused")
        with pytest.raises(JobRefused) as caught:
            await client.wait(["older-refused"], timeout=30)
        assert (caught.value.job_id, caught.value.seq) == ("older-refused", older)
        found = await client.refusal("early-refused")
        assert found is not None and found.seq == seq
        assert await client.refusal("fine-job") is None

        # A refused submission naming a recorded job's id, during a wait: no refusal of that job.
        await client.submit(task="demo.sleep", args={"seconds": 2}, id="has-record")
        waiting = asyncio.create_task(client.wait(["has-record"], timeout=60))
        await asyncio.sleep(0.5)
        # Another idempotency key, so that JetStream does not drop it as a copy of the first.
        await client.submit(command=["true"], id="has-record", idempotency_key="not-a-copy")
        await letter_seq(client, "has-record")
        record = (await waiting)["has-record"]
        assert record.phase == contract.JobPhase.SUCCEEDED and record.spec.task == "demo.sleep"


@pytest.mark.timeout(120)
async def test_the_cli_says_refused_in_one_line_with_exit_6(tmp_path: Path) -> None:
    async with running_stack(tmp_path, env=CLOSED) as stack, submitter_client(stack) as client:
        env = cli_env(stack)
        out = await jobq(
            "submit", "--command", "true", "--id", "cli-refused", "--wait", "--timeout", "60", env=env
        )
        seq = await letter_seq(client, "cli-refused")
        said = f"job cli-refused was refused: {WHY} (dead letter {seq})"
        assert_one_line_error(out, clibase.EXIT_REFUSED, says=said)
        for command in (
            ["status", "cli-refused"],
            ["status", "cli-refused", "--json"],
            ["result", "cli-refused"],
            ["result", "cli-refused", "--wait"],
        ):
            out = await jobq(*command, env=env)
            assert_one_line_error(out, clibase.EXIT_REFUSED, says=said, command=command)
        out = await jobq("status", "nope", env=env)
        assert_one_line_error(out, clibase.EXIT_NOT_FOUND, says="no job nope")
