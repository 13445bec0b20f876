"""Operator policy per queue (JOBQ_QUEUE_POLICY): parsing, matching, precedence, and the dead
end of a queued job the policy no longer admits."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import contract, policy, settings
from broker.dispatcher import refusal

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def spec(queue: str = "default", **fields: Any) -> contract.JobSpec:
    fields.setdefault("task", None if "command" in fields else "demo.sleep")
    return contract.JobSpec(id="j", queue=queue, **fields)


def from_env(value: object) -> policy.QueuePolicy:
    raw = value if isinstance(value, str) else json.dumps(value)
    return settings.Settings.from_env({"JOBQ_QUEUE_POLICY": raw}).dispatcher.queue_policy


# --- parsing ---------------------------------------------------------------------------------


def test_unset_or_empty_is_the_default_everywhere() -> None:
    assert settings.Settings.from_env({}).dispatcher.queue_policy == policy.QueuePolicy()
    assert from_env("  ") == policy.QueuePolicy()
    assert policy.QueuePolicy().rules_for("any") == policy.DEFAULT


def test_a_policy_is_read_into_rules_per_queue() -> None:
    got = from_env({"*": {"tasks": ["sklearn.*"]}, "gpu": {"commands": True, "images": ["reg/ml/*"]}})
    assert got.entries == {
        "*": policy.Rules(tasks=("sklearn.*",)),
        "gpu": policy.Rules(commands=True, images=("reg/ml/*",)),
    }


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"GPU!": {}}', "neither a queue name nor '*'"),
        ('{"gpu": ["sklearn.*"]}', "gpu: must be an object"),
        ('{"gpu": {"task": ["x"]}}', "unknown keys ['task']"),
        ('{"gpu": {"commands": "yes"}}', "gpu.commands: must be true or false"),
        ('{"gpu": {"commands": 1}}', "gpu.commands: must be true or false"),
        ('{"*": {"tasks": "sklearn.*"}}', "*.tasks: must be a list"),
        ('{"*": {"images": [""]}}', "*.images: must be a list of non-empty"),
        ('{"*": {"images": [3]}}', "*.images: must be a list"),
    ],
)
def test_a_bad_policy_stops_the_dispatcher_with_the_variable_named(raw: str, says: str) -> None:
    with pytest.raises(settings.SettingsError, match=r"^JOBQ_QUEUE_POLICY: ") as caught:
        from_env(raw)
    assert says in str(caught.value)


# --- matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "task", "allowed"),
    [
        ("sklearn.*", "sklearn.train", True),
        ("sklearn.*", "demo.sleep", False),
        ("sklearn.*", "sklearn.utils:resample", False),  # a built-in pattern opens no module
        ("sklearn.*:*", "sklearn.utils:resample", True),
        ("mypkg.jobs:*", "mypkg.jobs:train", True),
        ("mypkg.jobs:*", "mypkg.jobsx:train", False),
        ("mypkg.*:*", "mypkg:train", False),
        ("*", "os:system", False),
        ("*:*", "os:system", True),
        ("Demo.*", "demo.sleep", False),  # case-sensitive
    ],
)
def test_task_patterns(pattern: str, task: str, allowed: bool) -> None:
    assert policy.task_matches(task, pattern) is allowed


def test_the_default_admits_built_in_tasks_only() -> None:
    default = policy.QueuePolicy()
    for name in contract.BUILTIN_TASKS:
        assert default.refusal(spec(task=name)) is None
    assert default.refusal(spec(task="mypkg.jobs:train")) == (
        "queue default: task 'mypkg.jobs:train' matches no allowed pattern (JOBQ_QUEUE_POLICY "
        f"sets no tasks for default or *; default tasks={json.dumps(sorted(contract.BUILTIN_TASKS))})"
    )
    assert default.refusal(spec(command=("true",))) == (
        "queue default: command jobs are not allowed "
        "(JOBQ_QUEUE_POLICY sets no commands for default or *; default commands=false)"
    )
    assert default.refusal(spec(image="jobq:latest")) == (
        "queue default: image 'jobq:latest' matches no allowed pattern "
        "(JOBQ_QUEUE_POLICY sets no images for default or *; default images=[])"
    )


def test_a_queue_entry_wins_over_star_rule_by_rule() -> None:
    rules = from_env(
        {
            "*": {"tasks": ["sklearn.*"], "commands": False, "images": ["reg.example/*"]},
            "gpu": {"commands": True, "tasks": ["mypkg.*:*"]},
        }
    )
    assert rules.refusal(spec("gpu", command=("nvidia-smi",))) is None
    assert rules.refusal(spec("cpu", command=("sh",))) == (
        "queue cpu: command jobs are not allowed (JOBQ_QUEUE_POLICY *.commands=false)"
    )
    assert rules.refusal(spec("gpu", task="sklearn.train")) == (
        "queue gpu: task 'sklearn.train' matches no allowed pattern "
        '(JOBQ_QUEUE_POLICY gpu.tasks=["mypkg.*:*"])'
    )
    assert rules.refusal(spec("cpu", task="sklearn.train")) is None
    # gpu sets no images: the "*" entry's apply
    assert rules.refusal(spec("gpu", task="mypkg.a:b", image="reg.example/x:1")) is None
    assert rules.refusal(spec("gpu", task="mypkg.a:b", image="evil.example/x:1")) == (
        "queue gpu: image 'evil.example/x:1' matches no allowed pattern "
        '(JOBQ_QUEUE_POLICY *.images=["reg.example/*"])'
    )
    assert rules.rules_for("gpu") == policy.Rules(
        tasks=("mypkg.*:*",), commands=True, images=("reg.example/*",)
    )


def test_a_job_without_an_image_runs_the_operators_and_is_not_checked() -> None:
    assert from_env({"*": {"images": []}}).refusal(spec()) is None


def test_commands_are_checked_before_the_image() -> None:
    why = policy.QueuePolicy().refusal(spec(command=("true",), image="evil/x"))
    assert why is not None and "command jobs are not allowed" in why


MODULE_TASK = r"[A-Za-z_]\w{0,8}(\.[A-Za-z_]\w{0,8}){0,2}:[A-Za-z_]\w{0,8}"


@given(
    task=st.sampled_from(sorted(contract.BUILTIN_TASKS))
    | st.from_regex(re.compile(MODULE_TASK, re.ASCII), fullmatch=True),
    image=st.none() | st.text(min_size=1, max_size=80),
    queue=st.from_regex(re.compile(contract.QUEUE_PATTERN, re.ASCII), fullmatch=True),
)
def test_open_admits_anything_and_a_refusal_names_queue_and_variable(
    task: str, image: str | None, queue: str
) -> None:
    job = spec(queue, task=task, image=image)
    assert policy.QueuePolicy({"*": policy.OPEN}).refusal(job) is None
    closed = policy.QueuePolicy({queue: policy.Rules(tasks=(), images=())})
    why = closed.refusal(job)
    assert why is not None and why.startswith(f"queue {queue}: task ")
    assert f"JOBQ_QUEUE_POLICY {queue}.tasks=[]" in why


# --- before each attempt (the second line) -------------------------------------------------


def test_a_queued_job_the_policy_no_longer_admits_ends_dead_refused() -> None:
    job = contract.JobRecord(
        spec=spec("gpu", command=("sh", "-c", "true")),
        waiting_reason="no node has room",
        waiting_since=NOW,
        submitted_at=NOW,
        updated_at=NOW,
    )
    action = refusal.check(job, policy.QueuePolicy({"gpu": policy.Rules(commands=False)}), now=NOW)
    why = "queue gpu: command jobs are not allowed (JOBQ_QUEUE_POLICY gpu.commands=false)"
    assert action is not None and action.create is None and action.summary == "refused"
    assert action.record is not None
    assert (
        action.record.phase == contract.JobPhase.DEAD
        and action.record.reason == contract.FailureReason.REFUSED
    )
    assert action.record.message == why and action.record.finished_at == NOW
    assert action.record.waiting_reason == "" and action.record.waiting_since is None
    assert action.dead_letter is not None
    assert action.dead_letter.reason == contract.FailureReason.REFUSED and action.dead_letter.message == why
    assert action.dead_letter.payload == job.spec.model_dump_json()  # what a re-drive resubmits
    assert [(e.type, e.reason, e.message) for e in action.events] == [
        (contract.EventType.DEAD, contract.FailureReason.REFUSED, why)
    ]


def test_a_queued_job_the_policy_admits_is_left_alone() -> None:
    job = contract.JobRecord(spec=spec(), submitted_at=NOW, updated_at=NOW)
    assert refusal.check(job, policy.QueuePolicy(), now=NOW) is None
