"""Bounded intake without a server: dead letters always fit, intake never retries a verdict on the
bytes, and a submission JetStream gave up on (max deliveries) is dead-lettered and deleted."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from broker import contract
from broker.dispatcher import intake, undeliverable
from tests import submission_corpus as corpus

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# --- dead letters -----------------------------------------------------------------------------


def letter_of(data: bytes, **fields: Any) -> contract.DeadLetter:
    return contract.DeadLetter.of_original(
        data,
        job_id=fields.pop("job_id", None),
        reason=fields.pop("reason", contract.FailureReason.INVALID),
        message=fields.pop("message", "bad"),
        **fields,
    )


def test_a_small_utf8_original_is_inline_and_named_in_the_object_store() -> None:
    data = b'{"id": "a", "task": "nope"}'
    letter = letter_of(data, subject="jobq.submit.default", stream_seq=3)
    back = contract.DeadLetter.model_validate_json(letter.encode())
    assert back.payload == data.decode() and back.excerpt == data.decode()
    assert back.size == len(data) and back.stream_seq == 3
    assert back.sha256 is not None and back.original == contract.dead_original_key(back.sha256)
    assert letter.original_bytes == data and back.original_bytes is None


def test_a_big_or_non_utf8_original_is_only_an_excerpt() -> None:
    big = b"x" * (contract.DEAD_LETTER_INLINE_BYTES + 1)
    assert letter_of(big).payload is None
    assert letter_of(big).excerpt == "x" * contract.DEAD_LETTER_EXCERPT_BYTES
    odd = b'{"id": "\xff"}'
    assert letter_of(odd).payload is None and letter_of(odd).excerpt == '{"id": "\ufffd"}'


@pytest.mark.parametrize(
    "data",
    [
        corpus.escape_heavy_job(contract.SUBMIT_STREAM_MAX_MSG_BYTES - 64),
        corpus.invalid_utf8(contract.SUBMIT_STREAM_MAX_MSG_BYTES - 64),
        b"\x01" * contract.DEAD_LETTER_INLINE_BYTES,  # inline, and six bytes each as JSON
    ],
    ids=["escapes", "not-utf8", "inline-control-chars"],
)
def test_letters_of_the_worst_originals_fit(data: bytes) -> None:
    letter = letter_of(
        data,
        message="\x01" * 10**6,
        subject="jobq.submit." + "\x01" * 5000,
        headers={f"h{i}\x01": "\x01" * 100_000 for i in range(1000)},
    )
    encoded = letter.encode()
    assert len(encoded) <= contract.DEAD_LETTER_MAX_BYTES < corpus.NATS_MAX_PAYLOAD
    back = contract.DeadLetter.model_validate_json(encoded)
    assert back.size == len(data) and len(back.headers) <= 32 and len(back.message) <= 2000


def attempt(n: int) -> contract.Attempt:
    return contract.Attempt(
        number=n,
        pod=contract.pod_name("j", n),
        state=contract.AttemptState.FAILED,
        reason=contract.FailureReason.NODE_LOST,
        message="\x02" * 3000,
        log_tail="\x01" * 2048,
        created_at=NOW,
    )


def test_a_dead_job_with_many_attempts_and_a_big_spec_fits() -> None:
    """attempt_end.fail_current's letter: the spec JSON as original, every attempt with a log tail."""
    spec = contract.JobSpec(id="j", task="demo.sleep", args={"blob": '\x01"' * 120_000})
    attempts = tuple(attempt(n) for n in range(1, 1101))
    letter = letter_of(
        spec.model_dump_json().encode(),
        job_id="j",
        reason=contract.FailureReason.APP_ERROR,
        attempts=attempts,
    )
    assert len(letter.model_dump_json()) > contract.DEAD_LETTER_MAX_BYTES
    encoded = letter.encode()
    assert len(encoded) <= contract.DEAD_LETTER_MAX_BYTES
    back = contract.DeadLetter.model_validate_json(encoded)
    assert back.payload is None and back.original == letter.original
    assert [a.number for a in back.attempts] == [1096, 1097, 1098, 1099, 1100]


def test_encode_drops_the_inline_payload_first() -> None:
    spec = contract.JobSpec(id="j", task="demo.sleep", args={"blob": '"' * 30_000})  # ~120 KB inline
    attempts = tuple(attempt(n) for n in range(1, 15))  # ~420 KB
    letter = letter_of(spec.model_dump_json().encode(), job_id="j", attempts=attempts)
    assert letter.payload is not None and len(letter.model_dump_json()) > contract.DEAD_LETTER_MAX_BYTES
    back = contract.DeadLetter.model_validate_json(letter.encode())
    assert back.payload is None and len(back.attempts) == 14 and back.attempts[0].log_tail


def test_letters_written_before_these_fields_still_read() -> None:
    old = {"job_id": "a", "reason": "invalid", "message": "m", "payload": "{}", "at": NOW.isoformat()}
    letter = contract.DeadLetter.model_validate_json(json.dumps(old))
    assert letter.size is None and letter.original is None and letter.payload == "{}"


# --- fakes --------------------------------------------------------------------------------------


@dataclasses.dataclass
class FakeMetadata:
    @dataclasses.dataclass
    class Sequence:
        stream: int
        consumer: int = 1

    sequence: Sequence
    num_delivered: int = 1
    timestamp: dt.datetime | None = None


class FakeMsg:
    def __init__(
        self,
        data: bytes,
        *,
        subject: str = "jobq.submit.default",
        seq: int = 1,
        headers: dict[str, str] | None = None,
        delivered: int = 1,
    ) -> None:
        self.data = data
        self.subject = subject
        self.headers = headers
        self.metadata = FakeMetadata(FakeMetadata.Sequence(seq), num_delivered=delivered, timestamp=NOW)
        self.outcome: list[str] = []

    async def ack(self) -> None:
        self.outcome.append("ack")

    async def term(self) -> None:
        self.outcome.append("term")

    async def nak(self, delay: float | None = None) -> None:
        self.outcome.append(f"nak {delay}")


@dataclasses.dataclass
class RawMsg:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


class FakeStore:
    def __init__(self) -> None:
        self.letters: list[tuple[contract.DeadLetter, str]] = []
        self.originals: dict[str, bytes] = {}
        self.records: dict[str, contract.JobRecord] = {}
        self.events: list[contract.JobEvent] = []
        self.submissions: dict[int, RawMsg] = {}
        self.fail_with: Exception | None = None

    async def publish_dead_letter(self, letter: contract.DeadLetter, *, msg_id: str) -> None:
        assert len(letter.encode()) <= contract.DEAD_LETTER_MAX_BYTES
        if letter.original and letter.original_bytes is not None:
            self.originals[letter.original] = letter.original_bytes
        self.letters.append((letter, msg_id))

    async def claim_idempotency_key(self, key: str, *, job_id: str) -> str:
        return job_id

    async def create(self, record: contract.JobRecord) -> int | None:
        if self.fail_with is not None:
            raise self.fail_with
        if record.spec.id in self.records:
            return None
        self.records[record.spec.id] = record
        return 1

    async def get(self, job_id: str) -> tuple[contract.JobRecord, int] | None:
        record = self.records.get(job_id)
        return (record, 1) if record else None

    async def publish_event(self, event: contract.JobEvent) -> None:
        self.events.append(event)

    async def submission_at(self, seq: int) -> RawMsg | None:
        return self.submissions.get(seq)

    async def delete_submission(self, seq: int) -> None:
        self.submissions.pop(seq, None)


# --- intake -------------------------------------------------------------------------------------


def make_intake(st: FakeStore) -> tuple[intake.Intake, list[str]]:
    accepted: list[str] = []
    return intake.Intake(st, on_job=accepted.append), accepted  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "subject", "why"),
    [
        (corpus.deep(100_000), "jobq.submit.default", "recursion limit"),
        (
            corpus.invalid_utf8(contract.SUBMIT_STREAM_MAX_MSG_BYTES - 64),
            "jobq.submit.default",
            "the limit is",
        ),
        (corpus.escape_heavy_job(contract.SUBMIT_STREAM_MAX_MSG_BYTES - 64), "jobq.submit.default", "limit"),
        (b'{"id": "ok", "task": "demo.sleep"}', "jobq.submit.UPPER.x", "does not name a queue"),
        (b'{"id": "ok", "task": "demo.sleep", "queue": "default"}', "jobq.submit.gpu", "disagrees"),
    ],
    ids=["deep", "not-utf8", "escapes", "bad-subject", "queue-disagrees"],
)
async def test_invalid_submissions_are_dead_lettered_once_and_terminated(
    data: bytes, subject: str, why: str
) -> None:
    st = FakeStore()
    intake_, accepted = make_intake(st)
    msg = FakeMsg(data, subject=subject, seq=9, headers={"Nats-Msg-Id": "m"})
    await intake_.handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["term"] and accepted == [] and st.records == {}
    [(letter, msg_id)] = st.letters
    assert msg_id == "invalid-9" and letter.reason == contract.FailureReason.INVALID and why in letter.message
    assert letter.stream_seq == 9 and letter.subject == subject and letter.headers == {"Nats-Msg-Id": "m"}
    assert st.originals[letter.original or ""] == data


async def test_a_job_without_queue_takes_the_subjects_queue() -> None:
    st = FakeStore()
    intake_, accepted = make_intake(st)
    msg = FakeMsg(b'{"id": "g1", "task": "demo.sleep"}', subject="jobq.submit.gpu")
    await intake_.handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["ack"] and accepted == ["g1"] and st.records["g1"].spec.queue == "gpu"


async def test_a_store_failure_is_raised_for_a_redelivery_never_dead_lettered() -> None:
    st = FakeStore()
    st.fail_with = TimeoutError("kv unavailable")
    intake_, _ = make_intake(st)
    msg = FakeMsg(b'{"id": "ok", "task": "demo.sleep"}')
    with pytest.raises(TimeoutError):
        await intake_.handle(msg)  # type: ignore[arg-type]
    assert st.letters == [] and msg.outcome == []


def test_redeliveries_after_infrastructure_errors_back_off() -> None:
    delays = [intake.redelivery_delay(n) for n in range(1, contract.SUBMIT_MAX_DELIVER + 2)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    assert len(contract.SUBMIT_REDELIVERY_DELAYS_S) == contract.SUBMIT_MAX_DELIVER - 1


# --- max deliveries -------------------------------------------------------------------------------


def advisory(seq: int, *, stream: str = contract.STREAM_SUBMIT) -> FakeMsg:
    body = {
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": "x",
        "timestamp": NOW.isoformat(),
        "stream": stream,
        "consumer": contract.CONSUMER_DISPATCHER,
        "stream_seq": seq,
        "deliveries": contract.SUBMIT_MAX_DELIVER,
    }
    return FakeMsg(json.dumps(body).encode(), subject=contract.max_deliveries_subject())


async def test_a_submission_that_ran_out_of_deliveries_is_dead_lettered_and_deleted() -> None:
    st = FakeStore()
    st.submissions[41] = RawMsg("jobq.submit.default", b'{"id": "stuck", "task": "demo.sleep"}', {"A": "b"})
    msg = advisory(41)
    await undeliverable.Undeliverable(st).handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["ack"] and st.submissions == {}
    [(letter, msg_id)] = st.letters
    assert msg_id == "undeliverable-41" and letter.reason == contract.FailureReason.UNDELIVERABLE
    assert letter.job_id == "stuck" and letter.stream_seq == 41 and letter.headers == {"A": "b"}
    assert "5 deliveries" in letter.message and "valid" in letter.message
    assert st.originals[letter.original or ""] == b'{"id": "stuck", "task": "demo.sleep"}'


async def test_an_undeliverable_invalid_submission_says_why_and_fits() -> None:
    st = FakeStore()
    data = corpus.escape_heavy_job(contract.SUBMIT_STREAM_MAX_MSG_BYTES - 64)
    st.submissions[7] = RawMsg("jobq.submit.UPPER.x", data)
    await undeliverable.Undeliverable(st).handle(advisory(7))  # type: ignore[arg-type]
    [(letter, _)] = st.letters
    assert "it is invalid: subject" in letter.message and letter.size == len(data)
    assert st.originals[letter.original or ""] == data


async def test_a_submission_recorded_by_a_late_delivery_is_only_deleted() -> None:
    st = FakeStore()
    spec = contract.JobSpec(id="late", task="demo.sleep")
    st.records["late"] = contract.JobRecord(spec=spec, submitted_at=NOW, updated_at=NOW)
    st.submissions[5] = RawMsg("jobq.submit.default", spec.model_dump_json().encode())
    msg = advisory(5)
    await undeliverable.Undeliverable(st).handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["ack"] and st.letters == [] and st.submissions == {}


async def test_an_advisory_for_a_submission_already_gone_is_acked() -> None:
    st = FakeStore()
    msg = advisory(99)
    await undeliverable.Undeliverable(st).handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["ack"] and st.letters == []


async def test_an_unreadable_advisory_is_terminated() -> None:
    msg = FakeMsg(b"{nope", subject=contract.max_deliveries_subject())
    await undeliverable.Undeliverable(FakeStore()).handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["term"]
