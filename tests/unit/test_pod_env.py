"""Task arguments reach the pod whatever their size: inline in JOBQ_ARGS when small, else read by
the runner from the job record; and a job record always fits one KV value."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
from pathlib import Path

import pytest

from broker import contract
from broker.dispatcher.action import Action
from broker.dispatcher.limits import Limits
from broker.dispatcher.pod_spec import build as pod_spec
from submitter.client import InvalidJob, JobqClient
from workers import pod_env, pod_runtime, runner_settings
from workers.agent_settings import AgentSettings

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
LIMIT = contract.MAX_INLINE_ARGS_BYTES


def record_with(args: dict[str, object], **spec: object) -> contract.JobRecord:
    return contract.JobRecord(
        spec=contract.JobSpec(id="j1", task="demo.echo_size", args=args, **spec),  # type: ignore[arg-type]
        submitted_at=NOW,
        updated_at=NOW,
    )


def env_of(record: contract.JobRecord, limits: Limits | None = None) -> dict[str, str]:
    limits = limits or Limits()
    attempt = contract.Attempt(number=1, pod=contract.pod_name("j1", 1), created_at=NOW)
    return pod_spec(record, attempt, limits).env


def _inline_size(args: dict[str, object]) -> int:
    return len(json.dumps(args, separators=(",", ":"), sort_keys=True))


ARGS_CASES = [
    {},
    {"data": "x" * (LIMIT - 20)},
    {"data": "x" * (LIMIT - 11)},  # exactly the limit as compact JSON
    {"data": "x" * (LIMIT - 10)},  # one byte over
    {"data": "é" * (LIMIT // 6)},  # \u00e9 escapes: 6 bytes a character
    {"data": "😀" * (LIMIT // 4)},  # surrogate pairs: 12 bytes a character
    {str(i): i for i in range(5000)},
    {"data": "x" * (900 * 1024)},
    {"nested": [{"k": "v" * 100}] * 1000},
]


@pytest.mark.parametrize("args", ARGS_CASES, ids=lambda a: f"{_inline_size(a)}B")
def test_pod_spec_never_puts_more_than_the_threshold_in_the_environment(args: dict[str, object]) -> None:
    env = env_of(record_with(args))
    inline = _inline_size(args) <= LIMIT
    assert (contract.ENV_ARGS in env) is inline
    assert (contract.ENV_ARGS_FROM in env) is not inline
    if inline:
        assert json.loads(env[contract.ENV_ARGS]) == args
    else:
        assert env[contract.ENV_ARGS_FROM] == contract.ARGS_FROM_RECORD
    assert all(len(value.encode()) <= LIMIT for value in env.values())


def test_inline_args_at_the_threshold_are_exact() -> None:
    exact = {"data": "x" * (LIMIT - 11)}
    assert _inline_size(exact) == LIMIT
    assert len(env_of(record_with(exact))[contract.ENV_ARGS]) == LIMIT


def test_an_operators_extra_env_cannot_smuggle_args_in() -> None:
    limits = Limits(extra_env=(("JOBQ_ARGS", "x" * 200_000), ("JOBQ_ARGS_FROM", "nowhere"), ("OTHER", "1")))
    env = env_of(record_with({"a": 1}), limits)
    assert env[contract.ENV_ARGS] == '{"a":1}' and contract.ENV_ARGS_FROM not in env and env["OTHER"] == "1"


def test_command_jobs_get_no_args_variables() -> None:
    record = contract.JobRecord(
        spec=contract.JobSpec(id="j1", command=("true",)), submitted_at=NOW, updated_at=NOW
    )
    env = env_of(record)
    assert contract.ENV_ARGS not in env and contract.ENV_ARGS_FROM not in env and contract.ENV_TASK not in env


# --- the runner's side ------------------------------------------------------------------------

BASE_ENV = {contract.ENV_JOB_ID: "j1", contract.ENV_ATTEMPT: "1", contract.ENV_TASK: "demo.echo_size"}


def test_runner_takes_inline_args_or_defers_to_the_record() -> None:
    inline = runner_settings.RunnerSettings.from_env({**BASE_ENV, contract.ENV_ARGS: '{"data": "abc"}'})
    assert inline.args == {"data": "abc"} and not inline.args_in_record
    deferred = runner_settings.RunnerSettings.from_env(
        {**BASE_ENV, contract.ENV_ARGS_FROM: contract.ARGS_FROM_RECORD})
    assert deferred.args == {} and deferred.args_in_record


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({contract.ENV_ARGS_FROM: "s3"}, "the only source is 'record'"),
        ({contract.ENV_ARGS_FROM: "record", contract.ENV_ARGS: "{}"}, "not both"),
    ],
)
def test_runner_rejects_unclear_args_sources(change: dict[str, str], error: str) -> None:
    with pytest.raises(runner_settings.SettingsError, match=error):
        runner_settings.RunnerSettings.from_env({**BASE_ENV, **change})


# --- sizes: submissions and records --------------------------------------------------------------


def test_submission_limit_fits_one_nats_message_with_room_for_the_record() -> None:
    assert contract.MAX_SUBMISSION_BYTES < contract.MAX_RECORD_BYTES < contract.NATS_MAX_PAYLOAD
    assert contract.MAX_SUBMISSION_BYTES >= 900 * 1024


def test_a_submission_that_grows_when_stored_is_rejected() -> None:
    # "1e5" is 3 bytes as sent and 8 ("100000.0") as the dispatcher stores it.
    numbers = ",".join(["1e5"] * (contract.MAX_SUBMISSION_BYTES // 5))
    data = f'{{"id": "grows", "task": "demo.sleep", "args": {{"x": [{numbers}]}}}}'.encode()
    assert len(data) <= contract.MAX_SUBMISSION_BYTES
    with pytest.raises(contract.SubmissionError, match="bytes as stored"):
        contract.parse_submission(data)


def test_the_sdk_refuses_a_job_bigger_than_the_limit_before_sending_it() -> None:
    client = JobqClient("nats://127.0.0.1:1")
    ok = client.build_spec(task="demo.echo_size", args={"data": "x" * (900 * 1024)})
    assert len(ok.args["data"]) == 900 * 1024
    with pytest.raises(InvalidJob, match="the limit is"):
        client.build_spec(task="demo.echo_size", args={"data": "x" * contract.MAX_SUBMISSION_BYTES})


def _failed(n: int, tail: str) -> contract.Attempt:
    return contract.Attempt(
        number=n, pod=contract.pod_name("j1", n), state=contract.AttemptState.FAILED,
        reason=contract.FailureReason.NODE_LOST, message="m" * 200, log_tail=tail, created_at=NOW,
    )


def test_the_biggest_job_with_its_attempts_fits_one_kv_value() -> None:
    biggest = record_with({"data": "x" * (contract.MAX_SUBMISSION_BYTES - 600)})
    assert len(biggest.spec.model_dump_json()) <= contract.MAX_SUBMISSION_BYTES
    tail = "line\n" * (contract.LOG_TAIL_BYTES // 5)
    attempts = tuple(_failed(n, tail) for n in range(1, 41))
    grown = biggest.model_copy(update={"attempts": attempts})
    assert len(grown.model_dump_json().encode()) > contract.MAX_RECORD_BYTES

    fitted = grown.fitted()
    assert len(fitted.model_dump_json().encode()) <= contract.MAX_RECORD_BYTES
    assert [a.number for a in fitted.attempts] == list(range(1, 41))
    assert fitted.attempts[-1] == attempts[-1]  # the current attempt keeps everything
    assert fitted.attempts[0].log_tail == "" and fitted.attempts[-2].log_tail == tail  # oldest go first
    # The dispatcher writes only fitted records.
    action = Action(record=grown)
    assert action.record is not None and action.record == fitted


def test_a_record_that_fits_is_left_alone() -> None:
    small = record_with({"a": 1}).model_copy(update={"attempts": (_failed(1, "x"), _failed(2, "y"))})
    assert small.fitted() is small


# --- the node's side: a scrubbed environment (workers.pod_env) -----------------------------------

AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "PYTHONPATH": "/src/jobq",
    "HOME": "/root",
    "JOBQ_TEST_SECRET": "s3cret",
    "JOBQ_NATS_USER": "agent",
    "JOBQ_NATS_PASSWORD": "hunter2",
    "JOBQ_HTTP_TOKEN": "tok",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "OMP_NUM_THREADS": "4",
}


def test_the_node_base_keeps_only_the_allow_list_and_the_pass_through() -> None:
    assert pod_env.node_env(AGENT_ENV) == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                                           "TZ": "UTC", "PYTHONPATH": "/src/jobq"}
    passed = pod_env.node_env(AGENT_ENV, passthrough=("OMP_NUM_THREADS", "NOT_SET"))
    assert passed["OMP_NUM_THREADS"] == "4" and "NOT_SET" not in passed and "JOBQ_TEST_SECRET" not in passed


def test_a_pods_environment_is_base_home_spec_then_node_keys(tmp_path: Path) -> None:
    base = pod_env.node_env(AGENT_ENV)
    spec = {contract.ENV_JOB_ID: "j1", "PATH": "/spec/bin", contract.ENV_NODE: "forged"}
    env = pod_env.pod_env(base, spec, home=tmp_path, node_keys={contract.ENV_NODE: "n1"},
                          default_nats_url="nats://agent:hunter2@10.0.0.1:4222,nats://10.0.0.2:4222")
    assert env["PATH"] == "/spec/bin" and env[contract.ENV_NODE] == "n1" and env["HOME"] == str(tmp_path)
    assert env[contract.ENV_NATS_URL] == "nats://10.0.0.1:4222,nats://10.0.0.2:4222"  # no agent password
    assert not {"JOBQ_TEST_SECRET", "JOBQ_NATS_PASSWORD", "AWS_SECRET_ACCESS_KEY"} & set(env)
    own = pod_env.pod_env(base, {contract.ENV_NATS_URL: "nats://pod:pw@h:1"}, home=tmp_path, node_keys={},
                          default_nats_url="nats://agent:hunter2@h:1")
    assert own[contract.ENV_NATS_URL] == "nats://pod:pw@h:1"  # the spec's own is the dispatcher's choice


def test_pass_through_and_pod_user_settings() -> None:
    assert pod_env.passthrough_from_env({pod_env.ENV_PASSTHROUGH: " A, B ,,"}) == ("A", "B")
    with pytest.raises(pod_env.PodEnvError, match="JOBQ_POD_ENV_PASSTHROUGH"):
        pod_env.passthrough_from_env({pod_env.ENV_PASSTHROUGH: "A=1"})
    assert pod_env.user_from_env({}) is None
    nobody = pod_env.PodUser.parse("nobody")
    assert nobody.uid == pwd.getpwnam("nobody").pw_uid and nobody.name == "nobody"
    assert pod_env.PodUser.parse("1234:5678") == pod_env.PodUser(uid=1234, gid=5678)
    assert pod_env.PodUser.parse("1234").gid == 1234  # no passwd entry: the uid
    for bad in ("no-such-user-jobq", "nobody:0", "1234:no-such-group-jobq"):
        with pytest.raises(pod_env.PodEnvError, match="JOBQ_POD_USER"):
            pod_env.PodUser.parse(bad)


def test_a_pod_user_needs_a_root_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pod_env.ENV_POD_USER, "1234")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pod_env.PodEnvError, match="only root can run pods as another user"):
        AgentSettings(name="n", capacity=contract.Resources())
    monkeypatch.delenv(pod_env.ENV_POD_USER)
    assert AgentSettings(name="n", capacity=contract.Resources()).pod_user is None


async def test_the_simulated_kubelet_gives_a_pod_only_its_containers_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a real kubelet: the container's env (and the base), none of the kubelet's own."""
    from kubernetes_asyncio import client as k8s

    from workers import kubelet

    monkeypatch.setenv("JOBQ_TEST_SECRET", "s3cret")
    monkeypatch.setenv("JOBQ_TEST_SHARED", "shared")
    monkeypatch.setenv(pod_env.ENV_PASSTHROUGH, "JOBQ_TEST_SHARED")
    settings = kubelet.KubeletSettings(name="n", kubeconfig="", capacity=contract.Resources(),
                                       work_dir=tmp_path)
    api = k8s.ApiClient()
    try:
        pods = kubelet.Kubelet(api, settings).pods
        script = "env; cut -d' ' -f1,5 /proc/$$/stat"
        obj = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {}},
               "spec": {"containers": [{"name": "c", "command": ["sh", "-c", script],
                                        "env": [{"name": "FROM_SPEC", "value": "1"}]}]}}
        pod = pods._launch(obj, dt.datetime.now(dt.UTC))
        assert pod.process is not None
        assert pod_runtime.exit_code(await pod_runtime.wait_exit(pod.process)) == 0
    finally:
        await api.close()
    lines = pod.log_path.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert "JOBQ_TEST_SECRET" not in env and env["JOBQ_TEST_SHARED"] == "shared" and env["FROM_SPEC"] == "1"
    assert env[contract.ENV_POD_UID] == "u1" and env["HOME"] == str(settings.node_dir / "home" / "u1")
    assert int(lines[-1].split()[1]) == pod.pid, "the pod's own group, led by its wrapper"


def test_pods_are_never_handed_the_dispatchers_nats_credentials() -> None:
    from broker import contract, settings
    from broker.dispatcher.limits import Limits

    config = settings.Settings.from_env({"JOBQ_NATS_URL": "nats://disp:s3cret@a:4222,tls://u:p@b:4223"})
    assert Limits.from_settings(config).nats_url == "nats://a:4222,tls://b:4223"
    assert contract.public_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
