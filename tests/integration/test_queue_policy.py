"""Operator policy per queue (JOBQ_QUEUE_POLICY) against a real nats-server: a job its queue does
not admit is dead-lettered (reason ``refused``) naming the rule, gets no record and runs nothing;
an admitted job in the same queue runs; a job recorded before the policy refused it ends dead
before any pod."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from broker import contract, natsutil, policy, store
from broker.dispatcher import intake
from broker.embedded.natsserver import NatsServer
from submitter.client import JobqClient
from tests.conftest import running_stack, submitter_client

POLICY = {
    "*": {"tasks": ["demo.*"]},
    "gpu": {"commands": False, "tasks": ["demo.sleep"], "images": ["registry.example.com/ml/*"]},
}
REFUSED = {
    "no-command": (
        {"command": ["true"]},
        "queue gpu: command jobs are not allowed (JOBQ_QUEUE_POLICY gpu.commands=false)",
    ),
    "no-task": (
        {"task": "demo.flaky"},
        "queue gpu: task 'demo.flaky' matches no allowed pattern "
        '(JOBQ_QUEUE_POLICY gpu.tasks=["demo.sleep"])',
    ),
    "no-image": (
        {"task": "demo.sleep", "image": "docker.io/someone/miner:latest"},
        "queue gpu: image 'docker.io/someone/miner:latest' matches no allowed pattern "
        '(JOBQ_QUEUE_POLICY gpu.images=["registry.example.com/ml/*"])',
    ),
}


async def refused_letters(
    client: JobqClient, ids: set[str], *, timeout: float = 15
) -> dict[str, contract.DeadLetter]:
    deadline = time.monotonic() + timeout
    while True:
        found = {
            letter.job_id: letter
            for _, letter in await client.dead_letters()
            if letter.job_id in ids and letter.reason == contract.FailureReason.REFUSED
        }
        if set(found) == ids:
            return found
        assert time.monotonic() < deadline, f"no refused dead letter for {sorted(ids - set(found))}"
        await asyncio.sleep(0.2)


async def submit_refused(client: JobqClient) -> None:
    for job_id, (fields, _) in REFUSED.items():
        await client.submit(id=job_id, queue="gpu", **fields)


async def assert_refused(client: JobqClient) -> None:
    letters = await refused_letters(client, set(REFUSED))
    for job_id, (_, why) in REFUSED.items():
        letter = letters[job_id]
        assert letter.message == why and letter.subject == "jobq.submit.gpu"
        assert letter.payload is not None and json.loads(letter.payload)["id"] == job_id
        assert await client.get(job_id) is None, f"{job_id} got a record"


async def test_intake_dead_letters_what_the_queue_does_not_admit(nc: NATS, nats_server: NatsServer) -> None:
    """The intake alone, on the real server: refused submissions never become records."""
    st = await store.Store.open(nc)
    accepted: list[str] = []
    taker = intake.Intake(
        st, on_job=accepted.append, queue_policy=policy.parse(json.dumps(POLICY)), fence=lambda: 1
    )
    stop = asyncio.Event()
    running = asyncio.create_task(taker.run(stop))
    try:
        async with JobqClient(nats_server.url) as client:
            await submit_refused(client)
            await client.submit(
                id="admitted", queue="gpu", task="demo.sleep", image="registry.example.com/ml/t:1"
            )
            await client.submit(id="other-queue", queue="cpu", task="demo.flaky")  # "*" admits demo.*
            await assert_refused(client)
            deadline = time.monotonic() + 30
            while sorted(accepted) != ["admitted", "other-queue"]:
                assert time.monotonic() < deadline, accepted
                await asyncio.sleep(0.1)
            record = await client.get("admitted")
            assert record is not None and record.phase == contract.JobPhase.QUEUED
    finally:
        stop.set()
        await running


@pytest.mark.timeout(90)
async def test_the_stack_refuses_at_intake_and_runs_what_it_admits(tmp_path: Path) -> None:
    env = {"JOBQ_QUEUE_POLICY": json.dumps(POLICY)}
    async with running_stack(tmp_path, nodes=1, env=env) as stack, submitter_client(stack) as client:
        await submit_refused(client)
        allowed = await client.submit(
            id="allowed",
            queue="gpu",
            task="demo.sleep",
            args={"seconds": 0.1},
            image="registry.example.com/ml/train:1",
        )
        assert (await allowed.wait(timeout=60)).phase == contract.JobPhase.SUCCEEDED
        await assert_refused(client)

        # A job recorded before the policy refused it (written straight to the store here, as an
        # older dispatcher would have): it ends dead, refused, before any attempt.
        now = contract.utcnow()
        nc = await natsutil.connect(stack.nats_url, auth=stack.nats_options(), name="test")
        try:
            st = await store.Store.open(nc)
            record = contract.JobRecord(
                spec=contract.JobSpec(id="recorded-before", queue="gpu", command=("true",)),
                submitted_at=now,
                updated_at=now,
            )
            assert await st.create(record) is not None
        finally:
            await nc.drain()
        deadline = time.monotonic() + 30
        while True:
            got = await client.get("recorded-before")
            if got is not None and got.phase == contract.JobPhase.DEAD:
                break
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)
        assert got.reason == contract.FailureReason.REFUSED and got.attempts == ()
        assert got.message == REFUSED["no-command"][1]
        letters = await refused_letters(client, {"recorded-before"})
        assert letters["recorded-before"].message == got.message
