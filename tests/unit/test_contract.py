"""The wire contract: validation gives clear messages; the schema is what publishers get."""

from __future__ import annotations

import json

import pytest

from broker import contract


def test_minimal_job_is_valid() -> None:
    spec = contract.parse_submission(b'{"id": "abc", "task": "sklearn.train"}')
    assert spec.queue == "default"
    assert spec.requests == contract.PROFILES["small"]
    assert spec.dedupe_key == "abc"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"id": "a"}', "exactly one of 'task' or 'command'"),
        (b'{"id": "a", "task": "no.such.task"}', "unknown task 'no.such.task'"),
        (b'{"id": "UPPER", "task": "demo.sleep"}', "id: String should match pattern"),
        (b'{"id": "a", "task": "demo.sleep", "resources": {"memory": "lots"}}', "not a quantity"),
        (b'{"id": "a", "task": "demo.sleep", "profile": "huge"}', "unknown profile"),
        (b'{"id": "a", "task": "demo.sleep", "surprise": 1}', "surprise: Extra inputs are not permitted"),
    ],
)
def test_invalid_submissions_say_why(payload: bytes, expected: str) -> None:
    with pytest.raises(contract.SubmissionError, match=expected.replace("(", r"\(").replace("'", "'")):
        contract.parse_submission(payload)


def test_oversize_payload_is_rejected_before_parsing() -> None:
    big = json.dumps({"id": "a", "task": "demo.sleep", "args": {"x": "y" * contract.MAX_SUBMISSION_BYTES}})
    with pytest.raises(contract.SubmissionError, match="the limit is"):
        contract.parse_submission(big.encode())


def test_module_function_tasks_are_accepted() -> None:
    assert contract.parse_submission(b'{"id": "a", "task": "mypkg.jobs:train"}').task == "mypkg.jobs:train"


def test_memory_quantities() -> None:
    assert contract.parse_memory("512Mi") == 512 * 2**20
    assert contract.parse_memory("4Gi") == 4 * 2**30
    assert contract.parse_memory("1G") == 10**9


def test_json_schema_describes_the_job() -> None:
    schema = contract.json_schema("job")
    assert schema["required"] == ["id"]
    assert {"task", "command", "args", "resources", "retry", "timeout_s"} <= set(schema["properties"])


def test_pod_names_are_deterministic_dns_labels() -> None:
    name = contract.pod_name("j-" + "a" * 38, 12)
    assert name == contract.pod_name("j-" + "a" * 38, 12)
    assert len(name) <= 63


def test_disruptions_are_separate_from_app_failures() -> None:
    assert contract.FailureReason.NODE_LOST.is_disruption
    assert contract.FailureReason.EVICTED.is_disruption
    assert not contract.FailureReason.APP_ERROR.is_disruption
    assert not contract.FailureReason.TIMEOUT.is_disruption
