"""Property-based: parsing any bytes on any subject gives a valid JobSpec or a SubmissionError,
never anything else, and the dead letter of every rejected input fits in one NATS message."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker import contract
from tests import submission_corpus as corpus

PROPERTY_SETTINGS = settings(
    database=None,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

subjects = st.one_of(
    st.sampled_from([contract.submit_subject(q) for q in corpus.QUEUES]),
    st.sampled_from(corpus.BAD_SUBJECTS),
    st.text(max_size=40).map(lambda tail: contract.SUBMIT_PREFIX + tail),
    st.text(max_size=60),
)
headers = st.dictionaries(st.text(max_size=300), st.text(max_size=3000), max_size=40)


def check(data: bytes, subject: str, hdrs: dict[str, str] | None = None) -> contract.JobSpec | None:
    """The property: a JobSpec that is really valid, or a SubmissionError whose dead letter (built
    as intake builds it) encodes to at most DEAD_LETTER_MAX_BYTES and reads back."""
    try:
        spec = contract.parse_submission(data, subject=subject)
    except contract.SubmissionError as exc:
        letter = contract.DeadLetter.of_original(
            data,
            job_id=contract.guess_job_id(data),
            reason=contract.FailureReason.INVALID,
            message=str(exc),
            subject=subject,
            headers=hdrs or {},
            stream_seq=7,
        )
        encoded = letter.encode()
        assert len(encoded) <= contract.DEAD_LETTER_MAX_BYTES < corpus.NATS_MAX_PAYLOAD - 4096
        back = contract.DeadLetter.model_validate_json(encoded)
        assert back.size == len(data) and back.stream_seq == 7 and back.message
        assert back.original == contract.dead_original_key(letter.sha256 or "")
        assert back.payload is None or back.payload.encode() == data
        assert letter.original_bytes == data
        return None
    assert isinstance(spec, contract.JobSpec)
    assert spec.queue == contract.submission_queue(subject)
    assert contract.JobSpec.model_validate_json(spec.model_dump_json()) == spec
    now = contract.utcnow()
    record = contract.JobRecord(spec=spec, submitted_at=now, updated_at=now)
    assert contract.JobRecord.model_validate_json(record.model_dump_json()).spec == spec
    return spec


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=4096), subject=subjects, hdrs=headers)
@example(data=corpus.deep(100_000), subject="jobq.submit.default", hdrs={})
@example(data=corpus.invalid_utf8(1024 * 1024 - 64), subject="jobq.submit.default", hdrs={})
@example(data=corpus.escape_heavy_job(1024 * 1024 - 64), subject="jobq.submit.default", hdrs={})
@example(data=b"", subject="jobq.submit.UPPER.x", hdrs={"Nats-Msg-Id": "x" * 5000})
def test_any_bytes_give_a_spec_or_a_submission_error(data: bytes, subject: str, hdrs: dict[str, str]) -> None:
    check(data, subject, hdrs)


@PROPERTY_SETTINGS
@given(rng=st.randoms(use_true_random=False), queue=st.sampled_from(corpus.QUEUES), rounds=st.integers(1, 3))
def test_mutated_valid_jobs_give_a_spec_or_a_submission_error(
    rng: random.Random, queue: str, rounds: int
) -> None:
    job = corpus.valid_job(rng)
    data = json.dumps(job).encode()
    for _ in range(rounds):
        data = corpus.mutate(rng, job)
        try:
            job = json.loads(data)
        except (ValueError, RecursionError):  # the stdlib parser's limits, not jobq's
            break
        if not isinstance(job, dict):
            break
    check(data, contract.submit_subject(queue))


@PROPERTY_SETTINGS
@given(rng=st.randoms(use_true_random=False), queue=st.sampled_from(corpus.QUEUES))
def test_valid_jobs_parse_and_take_the_subjects_queue(rng: random.Random, queue: str) -> None:
    job = corpus.valid_job(rng)
    job.pop("queue", None)
    spec = check(json.dumps(job).encode(), contract.submit_subject(queue))
    assert spec is not None and spec.queue == queue


@pytest.mark.parametrize(
    "data",
    [
        corpus.deep(100_000),
        corpus.deep(100_000, kind="{"),
        b'{"id": "deep", "task": "demo.sleep", "args": {"x": ' + corpus.deep(50_000) + b"}}",
        corpus.escape_heavy_job(contract.SUBMIT_STREAM_MAX_MSG_BYTES - 512),
        corpus.escape_heavy_job(contract.MAX_SUBMISSION_BYTES + 1),
        corpus.invalid_utf8(contract.SUBMIT_STREAM_MAX_MSG_BYTES - 512),
        b"\x00" * (contract.SUBMIT_STREAM_MAX_MSG_BYTES - 512),
        json.dumps(
            {"id": "labels", "task": "demo.sleep", "labels": {str(i): i for i in range(20_000)}}
        ).encode(),
        json.dumps({"id": "t", "task": "x" * 200_000}).encode(),
        b'{"id": "nan", "task": "demo.sleep", "args": {"x": NaN}}',
    ],
    ids=[
        "deep-lists",
        "deep-objects",
        "deep-args",
        "escapes-1mib",
        "escapes-over-limit",
        "not-utf8-1mib",
        "nul-1mib",
        "20k-errors",
        "huge-task-name",
        "nan",
    ],
)
def test_boundary_inputs_are_rejected_with_a_letter_that_fits(data: bytes) -> None:
    assert check(data, "jobq.submit.default") is None
