"""A command that cannot be started ends the job dead at once, with the OS error, on both backends."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
from pathlib import Path

import pytest

from broker import contract, failure, retry_policy
from broker.backends.base import PodState
from broker.dispatcher.decide import decide
from broker.dispatcher.limits import Limits
from broker.dispatcher.observation import Observed
from workers import pod_runtime

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
OS_ERROR = "[Errno 2] No such file or directory: 'no-such-program'"


def running_job(*, task: str | None = None) -> contract.JobRecord:
    spec = contract.JobSpec(id="j1", task=task) if task else contract.JobSpec(id="j1", command=("x",))
    attempt = contract.Attempt(
        number=1, pod=contract.pod_name("j1", 1), state=contract.AttemptState.PENDING, node="node-1",
        created_at=NOW,
    )
    return contract.JobRecord(
        spec=spec, phase=contract.JobPhase.RUNNING, attempts=(attempt,), submitted_at=NOW, updated_at=NOW
    )


def start_error_pod() -> PodState:
    return PodState(
        name=contract.pod_name("j1", 1), job_id="j1", attempt=1, phase=contract.PodPhase.FAILED,
        node="node-1", node_ready=True, exit_code=contract.EXIT_START_ERROR,
        reason=contract.POD_REASON_START_ERROR, message=OS_ERROR,
    )


@pytest.mark.parametrize("has_task", [True, False])
def test_start_error_is_its_own_reason(has_task: bool) -> None:
    reason = failure.classify_exit(
        exit_code=contract.EXIT_START_ERROR, pod_reason=contract.POD_REASON_START_ERROR,
        policy=contract.RetryPolicy(), has_task=has_task,
    )
    assert reason == contract.FailureReason.START_ERROR
    assert not reason.is_disruption


def test_start_error_is_never_retried() -> None:
    verdict = retry_policy.judge(
        contract.FailureReason.START_ERROR, app_failures=1, disruptions=0,
        policy=contract.RetryPolicy(max_attempts=100), rng=random.Random(0),
    )
    assert not verdict.retry and "start_error" in verdict.why


@pytest.mark.parametrize("task", [None, "demo.sleep"])
def test_a_pod_that_could_not_start_ends_the_job_dead_with_the_os_error(task: str | None) -> None:
    action = decide(
        running_job(task=task), Observed(pods=(start_error_pod(),), last_heartbeat=NOW),
        now=NOW, rng=random.Random(0), limits=Limits(),
    )
    record = action.record
    assert record is not None and record.phase == contract.JobPhase.DEAD
    assert record.reason == contract.FailureReason.START_ERROR and record.retries == {}
    current = record.current
    assert current is not None and current.exit_code == contract.EXIT_START_ERROR
    assert OS_ERROR in current.message and "StartError" in current.message
    assert current.log_tail == ""  # there is no output, only the OS error
    assert OS_ERROR in record.message
    assert action.dead_letter is not None and OS_ERROR in action.dead_letter.message
    assert action.dead_letter.reason == contract.FailureReason.START_ERROR
    assert action.delete == (contract.pod_name("j1", 1),)


# --- the simulated kubelet reports the error exec would give, like the embedded node -----------


def exec_error(argv0: str, *, path: str, cwd: Path) -> str:
    """What starting ``argv0`` really raises (the embedded node agent reports this)."""
    with pytest.raises(OSError) as raised:
        subprocess.Popen([argv0], env={"PATH": path}, cwd=cwd, stdout=subprocess.DEVNULL)
    return str(raised.value)


@pytest.mark.parametrize("argv0", ["no-such-program-jobq", "./missing", "./not-executable", "./a-directory",
                                   "plain-file", "/nonexistent/dir/prog"])
def test_check_executable_raises_what_exec_raises(tmp_path: Path, argv0: str) -> None:
    (tmp_path / "not-executable").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "a-directory").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "plain-file").write_text("not a program")
    path = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    expected = exec_error(argv0, path=path, cwd=tmp_path)
    with pytest.raises(OSError) as checked:
        pod_runtime.check_executable(argv0, path=path, cwd=tmp_path)
    assert str(checked.value) == expected


def test_check_executable_accepts_what_exec_runs(tmp_path: Path) -> None:
    script = tmp_path / "ok.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    pod_runtime.check_executable("./ok.sh", cwd=tmp_path)
    pod_runtime.check_executable("sh", path=os.defpath)


def test_the_kubelet_spawn_raises_the_os_error_before_the_shell_wrapper_hides_it(tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(PermissionError, match=r"\[Errno 13\] Permission denied"):
        pod_runtime.spawn_detached([str(script)], env=dict(os.environ), log_path=tmp_path / "pod.log",
                                   exit_file=tmp_path / "pod.exit")
