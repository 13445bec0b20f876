"""Outputs scoped to the attempt, without servers: who may write them, and who is accepted."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from broker import contract
from broker.backends import k8s_objects
from broker.backends.base import PodState
from broker.dispatcher.decide import decide
from broker.dispatcher.limits import Limits
from broker.dispatcher.observation import Observed
from broker.dispatcher.pod_spec import build as pod_spec
from workers import runner_settings

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
POD = contract.pod_name("j1", 2)
WRITER = contract.Writer(pod=POD, pod_uid="uid-2", node="node-1", boot_id="boot-a")


def attempt(n: int = 2, *, writer: contract.Writer | None = None,
            state: contract.AttemptState = contract.AttemptState.RUNNING) -> contract.Attempt:
    return contract.Attempt(number=n, pod=contract.pod_name("j1", n), state=state, node="node-1",
                            created_at=NOW, started_at=NOW, writer=writer)


def result(n: int = 2, *, writer: contract.Writer | None = WRITER) -> contract.TaskResult:
    return contract.TaskResult(job_id="j1", attempt=n, node="node-1", writer=writer, output={"ok": 1},
                               started_at=NOW, finished_at=NOW)


def record(*attempts: contract.Attempt, result_attempt: int | None = None) -> contract.JobRecord:
    phase = contract.JobPhase.SUCCEEDED if result_attempt else contract.JobPhase.RUNNING
    return contract.JobRecord(spec=contract.JobSpec(id="j1", task="demo.sleep"), phase=phase,
                              attempts=attempts, result_attempt=result_attempt, submitted_at=NOW,
                              updated_at=NOW)


# --- who is accepted ----------------------------------------------------------------------------


def test_the_attempts_own_pod_is_accepted_with_or_without_a_known_uid() -> None:
    assert result().acceptance_problem(attempt()) == ""
    assert result().acceptance_problem(attempt(), pod_uid="uid-2") == ""


@pytest.mark.parametrize(("stored", "pod_uid", "why"), [
    (result(writer=None), "", "no writer stamp"),
    (result(writer=WRITER.model_copy(update={"pod": contract.pod_name("j1", 1)})), "",
     "not by the attempt's pod"),
    (result(writer=WRITER.model_copy(update={"pod_uid": "forged"})), "uid-2", "uid uid-2"),
    (result(writer=WRITER.model_copy(update={"pod_uid": ""})), "uid-2", "uid (none)"),
    (result(1, writer=WRITER), "", "result of attempt 1, not of attempt 2"),
])
def test_anyone_else_is_refused_with_the_reason(stored: contract.TaskResult, pod_uid: str, why: str) -> None:
    assert why in stored.acceptance_problem(attempt(), pod_uid=pod_uid)


def test_once_recorded_only_the_accepted_writer_counts() -> None:
    accepted = attempt(writer=WRITER, state=contract.AttemptState.SUCCEEDED)
    assert result().acceptance_problem(accepted) == ""
    # The same pod name and uid on a rebooted machine is another writer.
    rebooted = result(writer=WRITER.model_copy(update={"boot_id": "boot-b"}))
    assert "is not the accepted" in rebooted.acceptance_problem(accepted)
    other_uid = result(writer=WRITER.model_copy(update={"pod_uid": "uid-x"}))
    assert "uid uid-2" in other_uid.acceptance_problem(accepted)


def test_the_accepted_attempt_is_the_one_result_attempt_names() -> None:
    one, two = attempt(1), attempt(2, writer=WRITER)
    assert contract.accepted_attempt(record(one, two, result_attempt=2)) == two
    assert contract.accepted_attempt(record(one, two)) is None


def test_a_writer_travels_in_object_headers_and_garbage_reads_as_none() -> None:
    headers = WRITER.object_headers()
    assert list(headers) == [contract.ARTIFACT_WRITER_HEADER]
    assert contract.Writer.from_object_headers(headers) == WRITER
    bare = {contract.ARTIFACT_WRITER_HEADER: WRITER.model_dump_json()}  # not a list: read as well
    assert contract.Writer.from_object_headers(bare) == WRITER
    bad: Mapping[str, Any] | None
    for bad in (None, {}, {contract.ARTIFACT_WRITER_HEADER: []}, {contract.ARTIFACT_WRITER_HEADER: ["{"]},
                {contract.ARTIFACT_WRITER_HEADER: [42]}):
        assert contract.Writer.from_object_headers(bad) is None


# --- the dispatcher records whom it accepted ------------------------------------------------------


def test_a_succeeded_attempt_records_the_writer_of_its_accepted_result() -> None:
    running = record(attempt(2))
    pod = PodState(name=POD, job_id="j1", attempt=2, phase=contract.PodPhase.SUCCEEDED, node="node-1",
                   node_ready=True, exit_code=0, uid="uid-2")
    seen = Observed(pods=(pod,), last_heartbeat=NOW, result_exists=True, result_writer=WRITER)
    action = decide(running, seen, now=NOW, rng=random.Random(0), limits=Limits())
    assert action.record is not None and action.record.phase == contract.JobPhase.SUCCEEDED
    assert action.record.result_attempt == 2 and action.record.attempts[-1].writer == WRITER


# --- identity reaches the pod ---------------------------------------------------------------------


def test_the_pod_spec_names_the_pod_to_its_worker() -> None:
    spec = pod_spec(record(attempt(2)), attempt(2), Limits())
    assert spec.env[contract.ENV_POD] == spec.name == POD


def test_a_kubernetes_pod_gets_its_uid_from_the_downward_api_and_reports_it() -> None:
    spec = pod_spec(record(attempt(2)), attempt(2), Limits())
    manifest = k8s_objects.pod_manifest(spec, namespace="ns", image="img")
    env = {e["name"]: e for e in manifest["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_POD_UID]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env[contract.ENV_POD]["value"] == POD
    manifest["metadata"]["uid"] = "8d0c-uid"
    assert k8s_objects.pod_state(manifest, node_ready=True).uid == "8d0c-uid"
    del manifest["metadata"]["uid"]
    assert k8s_objects.pod_state(manifest, node_ready=True).uid == ""


def test_the_runner_stamps_its_pod_uid_node_and_boot_id(tmp_path: Path) -> None:
    env = {contract.ENV_JOB_ID: "j1", contract.ENV_ATTEMPT: "2", contract.ENV_TASK: "demo.sleep",
           contract.ENV_NODE: "node-1"}
    alone = runner_settings.RunnerSettings.from_env(env)
    assert (alone.pod, alone.pod_uid) == (POD, "")  # a runner started by hand: the deterministic name
    settings = runner_settings.RunnerSettings.from_env(
        {**env, contract.ENV_POD: "p", contract.ENV_POD_UID: "u"})
    assert settings.writer(boot_id="b") == contract.Writer(pod="p", pod_uid="u", node="node-1", boot_id="b")
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("5f1e-boot\n")
    assert runner_settings.read_boot_id(str(boot_id)) == "5f1e-boot"
    assert runner_settings.read_boot_id(str(tmp_path / "missing")) == ""
    if Path(runner_settings.BOOT_ID_PATH).exists():
        assert runner_settings.read_boot_id() == Path(runner_settings.BOOT_ID_PATH).read_text().strip() != ""
