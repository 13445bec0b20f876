"""Batched intake without a server: what a pulled batch becomes (records, events, acks, naks),
judged on an in-memory store that keeps the one rule that matters here: an atomic batch of
creates is stored whole or not at all. The real-server checks are in
tests/integration/test_batched_intake.py."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest

from broker import contract, store
from broker.dispatcher import intake, intake_batch, pull
from broker.dispatcher.lease import LeaseLost

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass
class Meta:
    sequence: SimpleNamespace
    num_delivered: int
    timestamp: dt.datetime


class Msg:
    def __init__(self, body: dict[str, Any] | bytes, *, seq: int, delivered: int = 1) -> None:
        self.data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.subject = "jobq.submit.default"
        self.reply = f"$JS.ACK.x.{seq}"
        self.headers: dict[str, str] = {}
        # The JetStream timestamp of a stored message: the same at every delivery.
        self.metadata = Meta(SimpleNamespace(stream=seq), delivered, T0 + dt.timedelta(microseconds=seq))
        self.outcome: list[str] = []

    async def ack(self) -> None:
        self.outcome.append("ack")

    async def term(self) -> None:
        self.outcome.append("term")

    async def nak(self, delay: float | None = None) -> None:
        self.outcome.append("nak")


def job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "task": "demo.sleep", **fields}


class FakeJs:
    """``get_msg`` by subject over the events published, as the read model uses it."""

    def __init__(self, events: list[contract.JobEvent]) -> None:
        self.events = events

    async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool) -> SimpleNamespace:
        for n, event in enumerate(self.events[seq - 1 :], start=seq):
            if contract.event_subject(event.job_id) == subject:
                return SimpleNamespace(data=event.model_dump_json().encode(), seq=n)
        raise nats.js.errors.NotFoundError


class Store:
    def __init__(self, *, atomic: bool = True) -> None:
        self.atomic = atomic
        self.records: dict[str, contract.JobRecord] = {}
        self.keys: dict[str, str] = {}
        self.events: list[contract.JobEvent] = []
        self.letters: list[contract.DeadLetter] = []
        self.js = FakeJs(self.events)
        self.atomic_batches: list[tuple[str, int, bool]] = []
        """(kind, size, stored) of every atomic batch asked for."""
        self.single_writes = 0
        self.fail_events: Exception | None = None

    def record_write(self, record: contract.JobRecord) -> store.Write:
        return store.Write(f"record.{record.spec.id}", record.model_dump_json().encode())

    def key_write(self, key: str, *, job_id: str) -> store.Write:
        return store.Write(f"key.{contract.idempotency_digest(key)}", job_id.encode())

    def event_write(self, event: contract.JobEvent) -> store.Write:
        return store.Write("event", event.model_dump_json().encode())

    async def write_atomically(self, writes: list[store.Write]) -> bool:
        kind = writes[0].subject.split(".")[0]
        if kind == "event" and self.fail_events is not None:
            raise self.fail_events
        taken: set[str] = (
            set(self.records) if kind == "record" else set(self.keys) if kind == "key" else set()
        )
        names = [w.subject.split(".", 1)[-1] for w in writes]
        stored = kind == "event" or (not set(names) & taken and len(set(names)) == len(names))
        self.atomic_batches.append((kind, len(writes), stored))
        if not stored:
            return False
        for name, write in zip(names, writes, strict=True):
            if kind == "record":
                self.records[name] = contract.JobRecord.model_validate_json(write.payload)
            elif kind == "key":
                self.keys[name] = write.payload.decode()
            else:
                self.events.append(contract.JobEvent.model_validate_json(write.payload))
        return True

    async def claim_idempotency_key(self, key: str, *, job_id: str) -> str:
        self.single_writes += 1
        return self.keys.setdefault(contract.idempotency_digest(key), job_id)

    async def create(self, record: contract.JobRecord) -> int | None:
        self.single_writes += 1
        if record.spec.id in self.records:
            return None
        self.records[record.spec.id] = record
        return 1

    async def get(self, job_id: str) -> tuple[contract.JobRecord, int] | None:
        record = self.records.get(job_id)
        return (record, 1) if record else None

    async def publish_event(self, event: contract.JobEvent) -> None:
        if self.fail_events is not None:
            raise self.fail_events
        self.single_writes += 1
        self.events.append(event)

    async def publish_dead_letter(self, letter: contract.DeadLetter, *, msg_id: str) -> None:
        self.letters.append(letter)

    def of(self, job_id: str) -> list[str]:
        return [f"{e.type.value}:{e.message}" for e in self.events if e.job_id == job_id]


async def take(st: Store, msgs: list[Msg], *, fence: Any = None) -> list[str]:
    accepted: list[str] = []
    taker = intake.Intake(st, on_job=accepted.append, fence=fence)  # type: ignore[arg-type]
    await taker.take(msgs)  # type: ignore[arg-type]
    await taker.flush()
    return accepted


async def test_a_batch_of_new_jobs_takes_one_atomic_write_per_kind_then_acks() -> None:
    st = Store()
    msgs = [Msg(job(f"j{n}", idempotency_key=f"k{n}"), seq=n) for n in range(1, 6)]
    assert await take(st, msgs) == ["j1", "j2", "j3", "j4", "j5"]
    assert st.atomic_batches == [("key", 5, True), ("record", 5, True), ("event", 5, True)]
    assert st.single_writes == 0 and all(m.outcome == ["ack"] for m in msgs)
    assert [e.job_id for e in st.events] == ["j1", "j2", "j3", "j4", "j5"]
    assert all(
        e.type == contract.EventType.ACCEPTED and e.phase == contract.JobPhase.QUEUED for e in st.events
    )
    assert st.records["j3"].submitted_at == msgs[2].metadata.timestamp


async def test_duplicates_inside_one_batch_are_decided_in_order() -> None:
    st = Store()
    msgs = [
        Msg(job("a"), seq=1),
        Msg(job("b", idempotency_key="k"), seq=2),
        Msg(job("a"), seq=3),  # the same job again under another message
        Msg(job("c", idempotency_key="k"), seq=4),  # another job with b's key
        Msg(job("a", args={"x": 1}), seq=5),  # a's id with another spec
        Msg(job("d"), seq=6),
    ]
    assert await take(st, msgs) == ["a", "b", "d"]
    assert set(st.records) == {"a", "b", "d"} and st.records["a"].spec.args == {}
    assert st.keys == {contract.idempotency_digest("k"): "b"}
    assert st.of("a") == [
        "accepted:queue default",
        "duplicate:already submitted",
        "duplicate:job id reused with a different spec; the first one stands",
    ]
    assert st.of("c") == ["duplicate:idempotency key already used by job b"]
    assert all(m.outcome == ["ack"] for m in msgs)


async def test_a_refused_atomic_batch_falls_back_to_one_write_each() -> None:
    st = Store()
    old = Msg(job("taken"), seq=1)
    await take(st, [old])
    msgs = [Msg(job("n1"), seq=2), Msg(job("taken"), seq=3), Msg(job("n2"), seq=4)]
    assert await take(st, msgs) == ["n1", "n2"]
    assert ("record", 3, False) in st.atomic_batches
    assert st.of("taken") == ["accepted:queue default", "duplicate:already submitted"]
    assert st.records["taken"].submitted_at == old.metadata.timestamp
    assert all(m.outcome == ["ack"] for m in msgs)


@pytest.mark.parametrize("event_stored", [True, False])
async def test_a_redelivery_that_finds_its_own_record_is_accepted_with_one_accepted_event(
    event_stored: bool,
) -> None:
    """A crash after the records (and maybe the events), before the acks: the same messages again."""
    st = Store()
    first = [Msg(job("r1"), seq=1), Msg(job("r2"), seq=2)]
    if event_stored:
        await take(st, first)
    else:
        st.fail_events = TimeoutError("events stream unavailable")
        await take(st, first)
        assert all(m.outcome == ["nak"] for m in first) and st.events == []
        st.fail_events = None
    again = [Msg(job("r1"), seq=1, delivered=2), Msg(job("r2"), seq=2, delivered=2), Msg(job("r3"), seq=3)]
    assert await take(st, again) == ["r1", "r2", "r3"]
    for job_id in ("r1", "r2", "r3"):
        assert st.of(job_id) == ["accepted:queue default"]
    assert all(m.outcome == ["ack"] for m in again)


async def test_invalid_messages_are_dead_lettered_and_the_rest_of_the_batch_goes_on() -> None:
    st = Store()
    msgs = [Msg(job("v1"), seq=1), Msg(b"{not json", seq=2), Msg({"id": "x"}, seq=3), Msg(job("v2"), seq=4)]
    assert await take(st, msgs) == ["v1", "v2"]
    assert [m.outcome for m in msgs] == [["ack"], ["term"], ["term"], ["ack"]]
    assert sorted(letter.stream_seq or 0 for letter in st.letters) == [2, 3]


async def test_a_store_failure_naks_the_unsettled_messages_only() -> None:
    st = Store()
    st.fail_events = TimeoutError("events stream unavailable")
    msgs = [Msg(job("f1"), seq=1), Msg(b"nope", seq=2), Msg(job("f2"), seq=3)]
    assert await take(st, msgs) == []
    assert [m.outcome for m in msgs] == [["nak"], ["term"], ["nak"]]


async def test_a_lost_lease_gives_the_batch_back_before_any_write() -> None:
    st = Store()

    def lost() -> int:
        raise LeaseLost("superseded")

    msgs = [Msg(job("l1"), seq=1), Msg(job("l2"), seq=2)]
    assert await take(st, msgs, fence=lost) == []
    assert st.records == {} and st.events == [] and st.atomic_batches == []
    assert all(m.outcome == ["nak"] for m in msgs)


async def test_without_atomic_batches_each_write_goes_on_its_own() -> None:
    st = Store(atomic=False)
    msgs = [Msg(job(f"s{n}"), seq=n) for n in range(1, 4)]
    assert await take(st, msgs) == ["s1", "s2", "s3"]
    assert st.single_writes == 6 and all(m.outcome == ["ack"] for m in msgs)


def test_waves_keep_jobs_sharing_an_id_or_a_key_apart() -> None:
    def sub(job_id: str, key: str | None = None) -> intake_batch.Submission:
        spec = contract.JobSpec(id=job_id, task="demo.sleep", idempotency_key=key)
        return intake_batch.Submission(Msg(b"", seq=1), spec, submitted=T0)  # type: ignore[arg-type]

    subs = [sub("a"), sub("b", "k"), sub("a"), sub("c", "k"), sub("a"), sub("d")]
    assert [[s.spec.id for s in wave] for wave in intake_batch.waves(subs)] == [
        ["a", "b", "d"],
        ["a", "c"],
        ["a"],
    ]


def test_a_pull_batch_ends_with_its_request() -> None:
    def delivery(n: int) -> Any:
        return SimpleNamespace(reply=f"$JS.ACK.s.c.1.{n}.{n}.0.0", subject="jobq.submit.default", n=n)

    def status(request: int) -> Any:
        return SimpleNamespace(reply="", subject=f"_INBOX.x.{request}")

    def take(room: int) -> tuple[list[int], bool]:
        batch, ended = pull.Puller._take(arrived, "_INBOX.x.2", room=room)
        return [int(m.reply.split(".")[-3]) for m in batch], ended

    # A status for an older request is skipped; what has arrived is handed over, the request goes on.
    arrived: collections.deque[Any] = collections.deque([delivery(1), status(1), delivery(2), delivery(3)])
    assert take(5) == ([1, 2, 3], False)
    arrived.extend([delivery(4), delivery(5), delivery(6)])
    assert take(2) == ([4, 5], True) and len(arrived) == 1  # fulfilled: the rest is the next one's
    arrived.append(status(2))
    assert take(5) == ([6], True)  # a status for this request ends it
    assert take(5) == ([], True)  # nothing came at all: the request was lost
