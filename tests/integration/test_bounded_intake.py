"""Bounded intake on real servers: every message on ``jobq.submit.>`` that JetStream stored ends
as a job record or a dead letter, whatever its bytes, subject or headers, and nothing stays in the
submission stream.

The evidence is what the dispatcher does not count itself: publish acks (which messages the
stream stored), the dead-letter stream JOBQ_DEAD (each letter names its submission's stream
sequence) and the job bucket. Messages JetStream itself refuses (bigger than max_payload or the
stream's max_msg_size, or with headers that set expectations it does not meet) fail at publish
time: the publisher is told, and they are not jobq's to record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.kv import KeyValue

from broker import contract, store
from broker.dispatcher import undeliverable
from broker.embedded.natsserver import NatsServer
from tests import submission_corpus as corpus
from tests.conftest import running_stack, submitter_client

STORM_SEED = 20261202
STORM_QUEUE = "storm"
"""The storm's valid jobs go here; JOBQ_QUEUE_LIMITS=storm=0 keeps them recorded, never run."""
STORM_SUBJECT = contract.submit_subject(STORM_QUEUE)
DRAIN_BOUND_S = 120.0
STREAM_MAX = contract.SUBMIT_STREAM_MAX_MSG_BYTES


@dataclasses.dataclass
class Outgoing:
    kind: str
    data: bytes
    subject: str = STORM_SUBJECT
    headers: dict[str, str] | None = None
    raw_headers: bytes | None = None
    """A header block sent as is over the raw protocol (what nats-py will not send)."""


@dataclasses.dataclass
class Published:
    out: Outgoing
    seq: int | None = None
    duplicate: bool = False
    error: str | None = None


def storm(rng: random.Random) -> list[Outgoing]:
    out: list[Outgoing] = []

    def add(kind: str, data: bytes, **options: object) -> None:
        message = Outgoing(kind, data, **options)  # type: ignore[arg-type]
        if message.headers is None and message.raw_headers is None:
            message.headers = {contract.HEADER_MSG_ID: f"storm-{len(out)}"}
        out.append(message)

    def job(job_id: str) -> bytes:
        body = corpus.valid_job(rng, job_id, queue=rng.choice([None, STORM_QUEUE]))
        if "idempotency_key" in body:
            body["idempotency_key"] = f"key-{job_id}"
        return json.dumps(body).encode()

    for n in range(60):
        add("valid", job(f"v-{n}"))
    for n in range(300):
        base = json.loads(job(f"m-{n}"))
        add("mutated", corpus.mutate(rng, base))
    for _ in range(60):
        add("random-bytes", rng.randbytes(rng.choice([0, 1, 2, 10, 100, 1000, 5000])))
    for size in (STREAM_MAX - 4096, STREAM_MAX - 300, STREAM_MAX, STREAM_MAX + 1):
        # Exactly max_payload only fits without headers; one byte more is refused by the client.
        hdrs = {} if size >= STREAM_MAX else None
        add("escapes-1mib", corpus.escape_heavy_job(size), headers=hdrs)
        add("not-utf8-1mib", corpus.invalid_utf8(size), headers=hdrs)
        add("nul-1mib", b"\x00" * size, headers=hdrs)
        big = json.dumps({"id": "big", "task": "demo.sleep", "args": {"x": "y" * size}}).encode()[: size - 3]
        add("big-valid-json-1mib", big + b'"}}', headers=hdrs)
    blob = json.dumps({"id": "edge", "task": "demo.sleep", "args": {"x": ""}}).encode()
    near = blob[:-3] + b"x" * (contract.MAX_SUBMISSION_BYTES - 1024 - len(blob)) + b'"}}'
    add("valid-near-limit", near)
    add("over-limit", near[:-3] + b"x" * 1025 + b'"}}')
    add("escapes-over-limit", corpus.escape_heavy_job(contract.MAX_SUBMISSION_BYTES + 1))
    for depth in (64, 200, 256, 1000, 100_000, 500_000):
        add("deep", corpus.deep(depth))
        add(
            "deep",
            b'{"id": "deep", "task": "demo.sleep", "args": {"x": '
            + corpus.deep(min(depth, 150_000), kind="{")
            + b"}}",
        )
    for n, subject in enumerate(corpus.BAD_SUBJECTS):
        add("bad-subject", job(f"s-{n}"), subject=subject)
    add("queue-disagrees", json.dumps({"id": "qd-1", "task": "demo.sleep", "queue": "default"}).encode())
    add("queue-disagrees", json.dumps({"id": "qd-2", "task": "demo.sleep", "queue": "gpu"}).encode())
    header_kinds: list[dict[str, str]] = [
        {},
        {"Jobq-Contract": "1"},
        {"Jobq-Contract": "999"},
        {"X-Unicode": "ünïcødé ✓ 😀"},
        {"X-Big": "v" * 32 * 1024},
        {f"X-Many-{i}": str(i) for i in range(200)},
        {"X-Empty": ""},
        {"X-Newline": "a\r\nStatus: 408"},
        {"Status": "100", "Description": "Idle Heartbeat"},
        {"Status": "404", "Description": "No Messages"},
        {"Status": "408", "Description": "Request Timeout"},
        {"Status": "409", "Description": "Leadership Change"},
        {"Status": "500", "Description": "boom"},
        {"Status": "503"},
        {"Nats-Expected-Stream": contract.STREAM_SUBMIT},
    ]
    for n, hdrs in enumerate(header_kinds):
        add("headers", job(f"h-{n}"), headers={contract.HEADER_MSG_ID: f"hdr-{n}", **hdrs})
        add("headers-empty-body", b"", headers={contract.HEADER_MSG_ID: f"hdr-empty-{n}", **hdrs})
    add("no-msg-id", job("no-id-1"), headers={})
    add("no-msg-id", b"{}", headers={})
    refused: list[dict[str, str]] = [
        {"Nats-Expected-Stream": "NOPE"},
        {"Nats-Expected-Last-Sequence": "999999"},
        {"Nats-Expected-Last-Msg-Id": "never-seen"},
        {"Nats-TTL": "1s"},
        {"Nats-Rollup": "all"},
    ]
    for n, hdrs in enumerate(refused):
        add("refused-headers", job(f"r-{n}"), headers={contract.HEADER_MSG_ID: f"refused-{n}", **hdrs})
    raw_blocks = [
        b"NATS/1.0 408 Request Timeout\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\n\r\n",
        b"NATS/1.0\r\nX-Bin: \xff\xfe\x80\r\n\r\n",
        b"NATS/1.0\r\nno colon here\r\nStatus: 404\r\n\r\n",
    ]
    for n, block in enumerate(raw_blocks):
        add("raw-headers", job(f"raw-{n}"), raw_headers=block)
        add("raw-headers-empty-body", b"", raw_headers=block)
    # Nats-Msg-Id duplicates: the stream drops them (duplicate acks) ...
    for earlier in rng.sample([o for o in out if o.headers and contract.HEADER_MSG_ID in o.headers], 25):
        add("msg-id-duplicate", earlier.data, subject=earlier.subject, headers=dict(earlier.headers or {}))
    # ... while the same job under a new Nats-Msg-Id is stored, and runs once.
    for earlier in rng.sample([o for o in out if o.kind == "valid"], 10):
        add("job-duplicate", earlier.data)
    rng.shuffle(out)
    return out


async def raw_publish(url: str, subject: str, header_block: bytes, payload: bytes,
                      options: dict[str, Any]) -> dict[str, object]:
    """HPUB over a bare TCP connection (TLS after INFO when ``options`` has ``tls``, as a NATS
    client does; as its ``user``, replies on an inbox a submitter may read): a header block
    nats-py would refuse to build."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        await reader.readline()  # INFO
        if options.get("tls") is not None:
            await writer.start_tls(options["tls"], server_hostname=parts.hostname)
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1,
                   **({"user": options["user"], "pass": options["password"]} if "user" in options else {})}
        size = len(header_block) + len(payload)
        writer.write(
            f"CONNECT {json.dumps(connect)}\r\nSUB _INBOX.raw.ack 1\r\n"
            f"HPUB {subject} _INBOX.raw.ack {len(header_block)} {size}\r\n".encode()
            + header_block
            + payload
            + b"\r\n"
        )
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
            elif line.startswith((b"MSG", b"HMSG")):
                fields = line.split()
                body = await reader.readexactly(int(fields[-1]) + 2)
                if line.startswith(b"HMSG"):
                    body = body[int(fields[-2]) :]
                return dict(json.loads(body[:-2]))
            elif line.startswith(b"-ERR"):
                return {"error": line.decode(errors="replace").strip()}
    finally:
        writer.close()


async def publish_all(url: str, messages: list[Outgoing], options: dict[str, Any]) -> list[Published]:
    nc = await nats.connect(url, **options)
    js = nc.jetstream(timeout=30)
    results: list[Published] = []
    try:
        for message in messages:
            result = Published(message)
            try:
                if message.raw_headers is not None:
                    ack = await raw_publish(url, message.subject, message.raw_headers, message.data, options)
                    if "error" in ack:
                        result.error = str(ack["error"])
                    else:
                        result.seq, result.duplicate = int(str(ack["seq"])), bool(ack.get("duplicate"))
                else:
                    pub = await js.publish(message.subject, message.data, headers=message.headers or None)
                    result.seq, result.duplicate = pub.seq, bool(pub.duplicate)
            except (nats.errors.Error, ValueError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            results.append(result)
    finally:
        await nc.drain()
    return results


async def drained(js: nats.js.JetStreamContext) -> bool:
    submit = await js.consumer_info(contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER)
    advisories = await js.consumer_info(contract.STREAM_ADVISORIES, contract.CONSUMER_DISPATCHER)
    stream = await js.stream_info(contract.STREAM_SUBMIT)
    return (
        submit.num_pending == 0
        and submit.num_ack_pending == 0
        and advisories.num_pending == 0
        and advisories.num_ack_pending == 0
        and stream.state.messages == 0
    )


async def letters_by_seq(js: nats.js.JetStreamContext) -> dict[int, list[contract.DeadLetter]]:
    info = await js.stream_info(contract.STREAM_DEAD)
    found: dict[int, list[contract.DeadLetter]] = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await js.get_msg(contract.STREAM_DEAD, seq)
        assert len(raw.data or b"") <= contract.DEAD_LETTER_MAX_BYTES
        letter = contract.DeadLetter.model_validate_json(raw.data or b"")
        assert letter.stream_seq is not None, letter
        found.setdefault(letter.stream_seq, []).append(letter)
    return found


async def recorded(jobs: KeyValue, idempotency: KeyValue, data: bytes) -> bool:
    """The message's job (by its id, or by the job owning its idempotency key) has a record."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return False
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return False
    try:
        await jobs.get(body["id"])
        return True
    except nats.js.errors.KeyNotFoundError:
        pass
    key = body.get("idempotency_key")
    if not isinstance(key, str):
        return False
    try:
        owner = await idempotency.get(contract.idempotency_digest(key))
        await jobs.get((owner.value or b"").decode())
        return True
    except nats.js.errors.KeyNotFoundError:
        return False


async def test_a_storm_of_hostile_submissions_ends_as_records_and_dead_letters(tmp_path: Path) -> None:
    async with running_stack(tmp_path, nodes=1, env={"JOBQ_QUEUE_LIMITS": f"{STORM_QUEUE}=0"}) as stack:
        messages = storm(random.Random(STORM_SEED))
        started = time.monotonic()
        published = await publish_all(stack.nats_url, messages, stack.nats_options("submitter"))
        publish_s = time.monotonic() - started
        stored = [p for p in published if p.seq is not None and not p.duplicate]
        duplicates = [p for p in published if p.duplicate]
        refused = [p for p in published if p.error is not None]
        assert len(messages) >= 500 and len(stored) >= 450
        assert {p.out.kind for p in duplicates} >= {"msg-id-duplicate"}
        # JetStream refused these at publish time: too big for max_payload / max_msg_size, or
        # headers stating expectations the stream does not meet. The publisher got the error.
        assert {p.out.kind for p in refused} <= {
            "refused-headers",
            "escapes-1mib",
            "not-utf8-1mib",
            "nul-1mib",
            "big-valid-json-1mib",
        }, [(p.out.kind, p.error) for p in refused]
        assert sum(p.out.kind == "refused-headers" for p in refused) >= 4

        nc: NATS = await nats.connect(stack.nats_url, **stack.nats_options())
        try:
            js = nc.jetstream(timeout=30)
            drain_started = time.monotonic()
            while not await drained(js):
                assert time.monotonic() - drain_started < DRAIN_BOUND_S, "submissions still pending"
                await asyncio.sleep(0.25)
            drain_s = time.monotonic() - drain_started

            letters = await letters_by_seq(js)
            jobs = await js.key_value(contract.BUCKET_JOBS)
            idempotency = await js.key_value(contract.BUCKET_IDEMPOTENCY)
            stored_seqs = {p.seq for p in stored}
            assert set(letters) <= stored_seqs, "a dead letter for a message that was never stored"
            assert all(len(found) == 1 for found in letters.values()), "a message dead-lettered twice"
            unaccounted = []
            recorded_n = 0
            for p in stored:
                if p.seq in letters:
                    continue
                if await recorded(jobs, idempotency, p.out.data):
                    recorded_n += 1
                else:
                    unaccounted.append((p.out.kind, p.out.subject, p.out.data[:120]))
            assert unaccounted == []
            reasons: dict[str, int] = {}
            for (letter,) in letters.values():
                reasons[letter.reason.value] = reasons.get(letter.reason.value, 0) + 1
            # Every invalid message was judged on its first delivery: none ran out of deliveries.
            assert set(reasons) == {"invalid"}, reasons
            # The whole original of every letter is kept.
            some = random.Random(STORM_SEED).sample(sorted(letters), 20)
            by_seq = {p.seq: p for p in stored}
            async with submitter_client(stack) as client:
                for seq in some:
                    assert await client.dead_letter_original(letters[seq][0]) == by_seq[seq].out.data
        finally:
            await nc.drain()

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{stack.http_url}healthz") as response:
                assert response.status == 200
            async with http.get(f"{stack.http_url}readyz") as response:
                assert response.status == 200
        assert "loop_crashed" not in (stack.logs / "dispatcher-0.log").read_text(errors="replace")
        async with submitter_client(stack) as client:
            after = await client.submit(id="after-the-storm", task="demo.sleep", args={"seconds": 0.1})
            assert (await after.wait(timeout=60)).phase == contract.JobPhase.SUCCEEDED
        print(
            f"\nstorm: {len(messages)} published in {publish_s:.1f}s; {len(stored)} stored, "
            f"{len(duplicates)} duplicate acks, {len(refused)} refused at publish; "
            f"{recorded_n} job records, {len(letters)} dead letters {reasons}; drained in {drain_s:.1f}s"
        )


async def test_an_old_consumer_gets_max_deliver_and_a_message_that_runs_out_is_dead_lettered(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    js = nc.jetstream(timeout=10)
    # What an older jobq left behind: the stream, and a durable with unlimited deliveries.
    await js.add_stream(
        api.StreamConfig(
            name=contract.STREAM_SUBMIT,
            subjects=[contract.SUBMIT_WILDCARD],
            retention=api.RetentionPolicy.WORK_QUEUE,
            max_msg_size=STREAM_MAX,
        )
    )
    old = api.ConsumerConfig(
        durable_name=contract.CONSUMER_DISPATCHER,
        name=contract.CONSUMER_DISPATCHER,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=30,
        filter_subject=contract.SUBMIT_WILDCARD,
    )
    await js.add_consumer(contract.STREAM_SUBMIT, old)
    assert (
        await js.consumer_info(contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER)
    ).config.max_deliver == -1
    st = await store.Store.open(nc)
    info = await js.consumer_info(contract.STREAM_SUBMIT, contract.CONSUMER_DISPATCHER)
    assert info.config.max_deliver == contract.SUBMIT_MAX_DELIVER

    data = corpus.escape_heavy_job(STREAM_MAX - 1024, job_id="stuck")
    ack = await js.publish("jobq.submit.default", data, headers={"X-Why": "the store was down"})
    # A dispatcher whose store is down: every delivery is nak'ed, until JetStream gives up.
    psub = await js.pull_subscribe_bind(contract.CONSUMER_DISPATCHER, stream=contract.STREAM_SUBMIT)
    for n in range(1, contract.SUBMIT_MAX_DELIVER + 1):
        [msg] = await psub.fetch(1, timeout=5)
        assert msg.metadata.num_delivered == n
        await msg.nak()
    # The dispatcher keeps pulling: the pull that finds no delivery left makes JetStream give up.
    with contextlib.suppress(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=1)
    await psub.unsubscribe()
    assert (await js.stream_info(contract.STREAM_SUBMIT)).state.messages == 1  # kept for us, on purpose

    stop = asyncio.Event()
    listener = asyncio.create_task(undeliverable.Undeliverable(st).run(stop))
    try:
        deadline = time.monotonic() + 30
        while (await js.stream_info(contract.STREAM_SUBMIT)).state.messages:
            assert time.monotonic() < deadline, "the undeliverable submission was not handled"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(listener, 10)
    [letter] = (await letters_by_seq(js))[ack.seq]
    assert letter.reason == contract.FailureReason.UNDELIVERABLE and letter.job_id == "stuck"
    assert f"not processed in {contract.SUBMIT_MAX_DELIVER} deliveries" in letter.message
    assert "it is invalid" in letter.message and letter.headers["X-Why"] == "the store was down"
    assert letter.size == len(data) and letter.payload is None and letter.original is not None
    assert await st.dead_original(letter.original) == data
    dead_seq = (await js.stream_info(contract.STREAM_DEAD)).state.last_seq
    saved = tmp_path / "original.bin"
    cli = [sys.executable, "-m", "submitter.cli", "dlq", "original", str(dead_seq), "--nats", nats_server.url]
    await asyncio.to_thread(subprocess.run, [*cli, "-o", str(saved)], check=True, timeout=60)
    assert saved.read_bytes() == data
    advisories = await js.consumer_info(contract.STREAM_ADVISORIES, contract.CONSUMER_DISPATCHER)
    assert advisories.num_pending == 0 and advisories.num_ack_pending == 0
