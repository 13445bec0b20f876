"""On both backends: a command that cannot be started ends dead at once with the OS error, and a
job with ~900 KiB of arguments runs with every byte of them (they cannot travel in the pod's
environment, whose strings Linux limits to 128 KiB)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from broker import contract
from submitter.client import JobqClient


@pytest.mark.parametrize("kind", ["missing", "not-executable"])
async def test_a_command_that_cannot_start_ends_dead_at_once_with_the_os_error(
    any_client: JobqClient, tmp_path: Path, kind: str
) -> None:
    if kind == "missing":
        program = "no-such-program-jobq"
        os_error = f"[Errno 2] No such file or directory: '{program}'"
    else:
        script = tmp_path / "not-executable.sh"
        script.write_text("#!/bin/sh\necho never\n")
        script.chmod(0o644)
        program, os_error = str(script), f"[Errno 13] Permission denied: '{script}'"
    handle = await any_client.submit(command=[program, "--flag"], retry={"max_attempts": 5})
    record = await handle.wait(timeout=60)

    assert record.phase == contract.JobPhase.DEAD, record
    assert record.reason == contract.FailureReason.START_ERROR
    assert len(record.attempts) == 1 and record.retries == {}  # not retried: another node fails alike
    attempt = record.attempts[0]
    assert attempt.reason == contract.FailureReason.START_ERROR
    assert attempt.exit_code == contract.EXIT_START_ERROR
    assert os_error in attempt.message and contract.POD_REASON_START_ERROR in attempt.message
    assert os_error in record.message
    letters = [letter for _, letter in await any_client.dead_letters() if letter.job_id == handle.id]
    assert len(letters) == 1 and letters[0].reason == contract.FailureReason.START_ERROR
    assert os_error in letters[0].message


@pytest.mark.timeout(240)
async def test_a_job_with_900_kib_of_arguments_sees_every_byte(any_client: JobqClient) -> None:
    data = os.urandom(450 * 1024).hex()  # 921,600 characters
    handle = await any_client.submit(task="demo.echo_size", args={"data": data}, retry={"max_attempts": 1})
    record = await handle.wait(timeout=180)
    assert record.phase == contract.JobPhase.SUCCEEDED, record.message
    result = await handle.result()
    assert result.output == {
        "chars": len(data),
        "bytes": len(data),
        "sha256": hashlib.sha256(data.encode()).hexdigest(),
    }
    assert record.spec.args == {"data": data}
