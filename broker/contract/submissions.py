"""Reading a submission: its queue from the subject, the spec from the bytes, a clear verdict
when it is invalid; and the JSON Schema non-Python publishers get."""

from __future__ import annotations

import re
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ValidationError

from broker.contract.base import clip
from broker.contract.dead_letters import DeadLetter
from broker.contract.jobs import QUEUE_PATTERN, JobSpec
from broker.contract.limits import DEAD_LETTER_MESSAGE_CHARS, MAX_SUBMISSION_BYTES
from broker.contract.messages import JobEvent, TaskResult
from broker.contract.names import CONTRACT_VERSION, SUBMIT_PREFIX, submit_subject


class SubmissionError(ValueError):
    """A submission that can never be processed; ``reason`` says why in one line."""


def submission_queue(subject: str) -> str:
    """The queue a submission subject names: ``jobq.submit.<queue>`` with exactly one token
    after the prefix, matching QUEUE_PATTERN. Raises SubmissionError for any other subject."""
    queue = subject[len(SUBMIT_PREFIX) :] if subject.startswith(SUBMIT_PREFIX) else ""
    if not subject.startswith(SUBMIT_PREFIX) or re.fullmatch(QUEUE_PATTERN, queue) is None:
        raise SubmissionError(
            f"subject {clip(subject, 256)!r} does not name a queue: submit to {SUBMIT_PREFIX}<queue>, "
            f"one token of lower-case letters, digits and '-' (at most 32)"
        )
    return queue


def parse_submission(data: bytes, *, subject: str | None = None) -> JobSpec:
    """Parse and validate a submission, raising SubmissionError with a clear message.

    This never raises anything else, whatever ``data`` holds. With ``subject`` (the subject the
    message was published on) the subject must name a queue (``submission_queue``); a spec
    without ``queue`` takes that queue, and one whose ``queue`` disagrees is invalid."""
    queue = submission_queue(subject) if subject is not None else None
    if len(data) > MAX_SUBMISSION_BYTES:
        raise SubmissionError(f"payload is {len(data)} bytes; the limit is {MAX_SUBMISSION_BYTES}")
    try:
        spec = JobSpec.model_validate_json(data)
    except ValidationError as exc:
        raise SubmissionError(_problems(exc)) from exc
    except Exception as exc:  # whatever else hostile bytes make the parser raise is a verdict too
        raise SubmissionError(clip(f"unreadable: {exc!r}", DEAD_LETTER_MESSAGE_CHARS)) from exc
    if queue is not None:
        if "queue" not in spec.model_fields_set:
            spec = spec.model_copy(update={"queue": queue})
        elif spec.queue != queue:
            raise SubmissionError(
                f"queue: {spec.queue!r} disagrees with the subject's queue {queue!r}; "
                f"publish to {submit_subject(spec.queue)} or leave 'queue' out"
            )
    try:
        again = JobSpec.model_validate_json(spec.model_dump_json())
    except Exception as exc:
        raise SubmissionError(clip(f"does not survive a JSON round trip: {exc!r}", 500)) from exc
    if again != spec:
        raise SubmissionError("not plain JSON: NaN and Infinity are no JSON numbers")
    if (canonical := len(spec.model_dump_json().encode())) > MAX_SUBMISSION_BYTES:  # e.g. 1e5 -> 100000.0
        raise SubmissionError(f"the job is {canonical} bytes as stored; the limit is {MAX_SUBMISSION_BYTES}")
    return spec


def _problems(exc: ValidationError, *, most: int = 10) -> str:
    """A ValidationError in one bounded line: the first ``most`` problems, each cut short."""
    errors = exc.errors(include_url=False, include_input=False)
    problems = [
        clip(f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}", 300)
        for err in errors[:most]
    ]
    if len(errors) > most:
        problems.append(f"and {len(errors) - most} more")
    return clip("; ".join(problems), DEAD_LETTER_MESSAGE_CHARS)


def guess_job_id(data: bytes) -> str | None:
    """The job id of an invalid submission, when it has a readable one (for the dead letter).
    Never raises: deep nesting, invalid UTF-8 or any size give None."""
    try:
        value = pydantic_core.from_json(data)
    except Exception:
        return None
    job_id = value.get("id") if isinstance(value, dict) else None
    return job_id if isinstance(job_id, str) and len(job_id) <= 64 else None


def json_schema(kind: Literal["job", "event", "result", "dead-letter"] = "job") -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {
        "job": JobSpec,
        "event": JobEvent,
        "result": TaskResult,
        "dead-letter": DeadLetter,
    }
    schema = models[kind].model_json_schema()
    schema["$id"] = f"https://jobq.dev/schema/v{CONTRACT_VERSION}/{kind}.json"
    return schema
