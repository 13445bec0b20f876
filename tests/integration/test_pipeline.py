"""End to end on the embedded stack: SDK, plain NATS and CLI submissions all run and finish."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys

import nats

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.conftest import cli_env


async def raw_publish(stack: Stack, payload: bytes, *, msg_id: str, queue: str = "default") -> None:
    """What a service in any language does: publish JSON with a Nats-Msg-Id header, as the
    submitter user."""
    nc = await nats.connect(stack.nats_url, **stack.nats_options("submitter"))
    try:
        js = nc.jetstream()
        await js.publish(f"jobq.submit.{queue}", payload, headers={"Nats-Msg-Id": msg_id})
    finally:
        await nc.drain()


async def test_sdk_plain_nats_and_cli_jobs_all_succeed(stack: Stack, client: JobqClient) -> None:
    sdk = [
        await client.submit(
            task="sklearn.train", args={"dataset": ("iris", "wine")[i % 2], "model": "logreg"}
        )
        for i in range(20)
    ]
    raw_ids = [f"raw-{i}" for i in range(20)]
    for job_id in raw_ids:
        body = {"id": job_id, "task": "demo.sleep", "args": {"seconds": 0.2}, "profile": "small"}
        await raw_publish(stack, json.dumps(body).encode(), msg_id=job_id)
    cli_ids = []
    for i in range(5):
        out = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "submitter.cli",
                "submit",
                "--task",
                "sklearn.evaluate",
                "--args",
                json.dumps({"dataset": "iris", "folds": 3}),
                "--cpu",
                "0.5",
                "--memory",
                "512Mi",
                "--id",
                f"cli-{i}",
            ],
            env=cli_env(stack),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        cli_ids.append(out.stdout.strip())
    assert cli_ids == [f"cli-{i}" for i in range(5)]

    ids = [h.id for h in sdk] + raw_ids + cli_ids
    records = await client.wait(ids, timeout=240)
    assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}

    trained = await sdk[0].result()
    assert trained.output["accuracy"] > 0.8 and trained.attempt == 1
    evaluated = await client.result("cli-0")
    assert evaluated.job_id == "cli-0"

    for job_id in (sdk[3].id, "raw-7", "cli-2"):
        kinds = [e.type for e in await client.events(job_id, settled=True)]
        assert kinds == ["accepted", "attempt_created", "attempt_started", "succeeded"], (job_id, kinds)
        record = records[job_id]
        assert record.result_attempt == 1 and record.finished_at is not None
        assert record.attempts[0].state == contract.AttemptState.SUCCEEDED and record.attempts[0].node

    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "submitter.cli", "list", "--state", "succeeded"],
        env=cli_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(listing.stdout.splitlines()) == 1 + 45  # the header, then a job a line


async def test_same_idempotency_key_runs_once(stack: Stack, client: JobqClient) -> None:
    first = await client.submit(
        task="demo.sleep", args={"seconds": 0.1}, idempotency_key="nightly-2026-11-29"
    )
    again = await client.submit(
        task="demo.sleep", args={"seconds": 0.1}, idempotency_key="nightly-2026-11-29"
    )
    assert first.id == again.id
    # A raw publisher that reuses the key under another id (and another Nats-Msg-Id) is caught too.
    body = {"id": "other-id", "task": "demo.sleep", "idempotency_key": "nightly-2026-11-29"}
    await raw_publish(stack, json.dumps(body).encode(), msg_id="different-msg-id")
    record = await first.wait(timeout=60)
    assert record.phase == contract.JobPhase.SUCCEEDED and len(record.attempts) == 1
    await asyncio.sleep(1)
    assert await client.get("other-id") is None
    kinds = [e.type for e in await client.events("other-id")]
    assert kinds == ["duplicate"]


async def test_bad_messages_are_dead_lettered_and_the_dispatcher_keeps_serving(
    stack: Stack, client: JobqClient
) -> None:
    bad = {
        "malformed": b"{this is not json",
        "schema": json.dumps({"id": "bad-schema", "task": "demo.sleep", "priority": "high"}).encode(),
        "unknown-task": json.dumps({"id": "bad-task", "task": "nope.missing"}).encode(),
        "oversize": json.dumps(
            {
                "id": "bad-big",
                "task": "demo.sleep",
                "args": {"blob": "x" * (contract.MAX_SUBMISSION_BYTES + 10)},
            }
        ).encode(),
        "not-an-object": b"[1, 2, 3]",
    }
    for name, payload in bad.items():
        await raw_publish(stack, payload, msg_id=f"bad-{name}")
    good = await client.submit(task="demo.sleep", args={"seconds": 0.1})
    assert (await good.wait(timeout=60)).phase == contract.JobPhase.SUCCEEDED

    letters = {}
    for _ in range(50):
        letters = {letter.sha256: letter for _, letter in await client.dead_letters()}
        if len(letters) >= len(bad):
            break
        await asyncio.sleep(0.2)
    assert len(letters) == len(bad)
    by_sha = {hashlib.sha256(payload).hexdigest(): name for name, payload in bad.items()}
    named = {by_sha[sha]: letter for sha, letter in letters.items() if sha is not None}
    reasons = {name: letter.message for name, letter in named.items()}
    assert "Invalid JSON" in reasons["malformed"]
    assert "priority" in reasons["schema"]
    assert "unknown task 'nope.missing'" in reasons["unknown-task"]
    assert "the limit is" in reasons["oversize"]
    assert all(letter.reason == contract.FailureReason.INVALID for letter in letters.values())
    assert named["unknown-task"].job_id == "bad-task"
    # Small originals are inline; the oversized one is an excerpt, and whole in the object store.
    assert named["malformed"].payload == bad["malformed"].decode()
    assert named["oversize"].payload is None and named["oversize"].size == len(bad["oversize"])
    for name, letter in named.items():
        assert await client.dead_letter_original(letter) == bad[name]
    # Nothing is redelivered forever: the submission stream is empty.
    info = await client.js.consumer_info(contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER)
    assert info.num_pending == 0 and info.num_ack_pending == 0
