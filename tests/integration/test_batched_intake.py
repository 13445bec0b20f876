"""Batched intake on real servers: submissions that pile up while the dispatcher is down are taken
in large batches, and every message still ends as exactly one record (with exactly one
``accepted`` event) or one dead letter; a dispatcher killed in the middle of a large intake loses
and duplicates nothing.

The evidence is what the dispatcher does not count itself: publish acks (which messages the
stream stored, in which order), the job and idempotency buckets, the events stream, the
dead-letter stream and the consumer's own state.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext

from broker import contract
from broker.embedded.stack import Stack
from broker.readmodel import events as event_log
from broker.readmodel import records
from tests.conftest import running_stack

QUEUE = "batched"
"""JOBQ_QUEUE_LIMITS=batched=0: the jobs are recorded and stay queued, no pod is ever made."""
ENV = {"JOBQ_QUEUE_LIMITS": f"{QUEUE}=0"}
SUBJECT = contract.submit_subject(QUEUE)


def body(job_id: str, **fields: Any) -> bytes:
    return json.dumps({"id": job_id, "command": ["true"], **fields}).encode()


async def publish_all(js: JetStreamContext, messages: list[bytes], *, prefix: str) -> list[int]:
    """Publish each message under its own Nats-Msg-Id; their stream sequences, in order."""
    gate = asyncio.Semaphore(128)

    async def one(n: int, data: bytes) -> int:
        async with gate:
            ack = await js.publish(SUBJECT, data, headers={contract.HEADER_MSG_ID: f"{prefix}-{n}"})
            assert not ack.duplicate
            return ack.seq

    return list(await asyncio.gather(*(one(n, data) for n, data in enumerate(messages))))


async def stop_dispatcher(stack: Stack) -> None:
    stack.signal_dispatcher(0, signal.SIGTERM)
    await asyncio.wait_for(stack.dispatchers[0].wait(), 30)


async def wait_drained(js: JetStreamContext, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER)
        stream = await js.stream_info(contract.STREAM_SUBMIT)
        if info.num_pending == 0 and info.num_ack_pending == 0 and stream.state.messages == 0:
            return
        assert time.monotonic() < deadline, (
            f"not drained: {info.num_pending} pending, {info.num_ack_pending} unacked"
        )
        await asyncio.sleep(0.25)


async def job_keys(js: JetStreamContext) -> set[str]:
    # Not kv.keys(): it can stop early while the dispatcher writes records (see records.py).
    return set(await records.job_ids(js))


async def events_by_job(js: JetStreamContext) -> dict[str, list[contract.JobEvent]]:
    found: dict[str, list[contract.JobEvent]] = collections.defaultdict(list)
    for event in await event_log.stored_events(js):
        found[event.job_id].append(event)
    return found


async def dead_letter_seqs(js: JetStreamContext) -> list[int]:
    info = await js.stream_info(contract.STREAM_DEAD)
    seqs = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        letter = contract.DeadLetter.model_validate_json(
            (await js.get_msg(contract.STREAM_DEAD, seq)).data or b""
        )
        assert letter.reason == contract.FailureReason.INVALID and letter.stream_seq is not None
        seqs.append(letter.stream_seq)
    return seqs


def storm(rng: random.Random) -> tuple[list[bytes], list[str]]:
    """Messages, and each one's kind; duplicates sit right after their original, so that most
    fall in the same pulled batch."""
    out: list[tuple[bytes, str]] = []
    for n in range(260):
        if n % 13 == 0:  # another job under the previous job's idempotency key
            out.append((body(f"kd-{n}", idempotency_key=f"key-{n - 1}"), "key-duplicate"))
        elif n % 11 == 0:  # the previous job again, under another message id
            out.append((out[-1][0], "resubmitted"))
        elif n % 17 == 0:  # the previous job's id with another spec
            previous = json.loads(out[-1][0])
            out.append((body(previous["id"], args={"other": n}), "id-reused"))
        elif n % 7 == 0:
            out.append((rng.choice([b"", b"{", b'{"id": 5}', b'{"id": "x", "task": "no.such"}']), "invalid"))
        out.append((body(f"job-{n}", idempotency_key=f"key-{n}" if n % 2 else None), "valid"))
    return [data for data, _ in out], [kind for _, kind in out]


async def test_a_pile_of_submissions_is_taken_in_batches_each_one_exactly_once(tmp_path: Path) -> None:
    async with running_stack(tmp_path, nodes=1, env=ENV) as stack:
        nc = await nats.connect(stack.nats_url, **stack.nats_options())
        try:
            js = nc.jetstream(timeout=30)
            await stop_dispatcher(stack)
            messages, kinds = storm(random.Random(20261202))
            assert len(messages) >= 300
            seqs = await publish_all(js, messages, prefix="pile")
            await stack.start_dispatcher(0)
            await wait_drained(js, timeout=90)

            # What each message should have become, decided in stream order.
            expected_records: dict[str, int] = {}
            key_owner: dict[str, str] = {}
            invalid: set[int] = set()
            for seq, data in sorted(zip(seqs, messages, strict=True)):
                try:
                    spec = contract.parse_submission(data, subject=SUBJECT)
                except contract.SubmissionError:
                    invalid.add(seq)
                    continue
                if spec.idempotency_key and key_owner.setdefault(spec.idempotency_key, spec.id) != spec.id:
                    continue
                expected_records.setdefault(spec.id, seq)
            assert len(invalid) >= 20 and len(expected_records) >= 200

            assert await job_keys(js) == set(expected_records)
            letters = await dead_letter_seqs(js)
            assert sorted(letters) == sorted(invalid), "each invalid message dead-lettered exactly once"
            events = await events_by_job(js)
            jobs = await js.key_value(contract.BUCKET_JOBS)
            for job_id, seq in expected_records.items():
                accepted = [e for e in events[job_id] if e.type == contract.EventType.ACCEPTED]
                assert len(accepted) == 1, (job_id, events[job_id])
                record = contract.JobRecord.model_validate_json((await jobs.get(job_id)).value or b"")
                first = contract.parse_submission(messages[seqs.index(seq)], subject=SUBJECT)
                assert record.spec == first, "the first submission of an id stands"
            idempotency = await js.key_value(contract.BUCKET_IDEMPOTENCY)
            for key, owner in key_owner.items():
                entry = await idempotency.get(contract.idempotency_digest(key))
                assert (entry.value or b"").decode() == owner
            # Every valid message that made no record was told so: one duplicate event each.
            duplicates = len(messages) - len(invalid) - len(expected_records)
            assert (
                sum(e.type == contract.EventType.DUPLICATE for es in events.values() for e in es)
                == duplicates
            )
            assert {"key-duplicate", "resubmitted", "id-reused"} <= set(kinds)

            # The records were written in atomic batches, not one by one.
            kv_stream = f"KV_{contract.BUCKET_JOBS}"
            info = await js.stream_info(kv_stream)
            batch_ids: collections.Counter[str | None] = collections.Counter()
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                raw = await js.get_msg(kv_stream, seq)
                batch_ids[(raw.headers or {}).get("Nats-Batch-Id")] += 1
            batched = sum(n for batch_id, n in batch_ids.items() if batch_id is not None)
            assert batched >= len(expected_records) // 2, batch_ids.most_common(5)
        finally:
            await nc.drain()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_dispatcher_killed_in_the_middle_of_a_large_intake_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    jobs = 3000
    async with running_stack(tmp_path, nodes=1, env=ENV) as stack:
        nc = await nats.connect(stack.nats_url, **stack.nats_options())
        try:
            js = nc.jetstream(timeout=30)
            await stop_dispatcher(stack)
            messages = [
                body(f"k-{n:05d}", idempotency_key=f"kk-{n}" if n % 3 == 0 else None) for n in range(jobs)
            ]
            await publish_all(js, messages, prefix="kill")
            await stack.start_dispatcher(0)
            deadline = time.monotonic() + 60
            while len(await job_keys(js)) < jobs // 5:
                assert time.monotonic() < deadline, "intake did not start"
                await asyncio.sleep(0.02)
            stack.signal_dispatcher(0, signal.SIGKILL)
            await stack.dispatchers[0].wait()
            at_kill = len(await job_keys(js))
            info = await js.consumer_info(contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER)
            assert at_kill < jobs and info.num_pending + info.num_ack_pending > 0, "killed too late"

            await stack.start_dispatcher(0)  # unacked submissions come back after ack_wait (30 s)
            await wait_drained(js, timeout=150)
            assert await job_keys(js) == {f"k-{n:05d}" for n in range(jobs)}
            events = await events_by_job(js)
            for n in range(jobs):
                kinds = [e.type for e in events[f"k-{n:05d}"]]
                assert kinds.count(contract.EventType.ACCEPTED) == 1, (n, kinds)
                assert contract.EventType.DUPLICATE not in kinds, (n, kinds)
            print(
                f"\nkilled with {at_kill} of {jobs} records stored; all {jobs} there once after the restart"
            )
        finally:
            await nc.drain()
