"""The task pod manifest: the operator's pod defaults (settings.BackendSettings), hardening kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from broker import contract, settings
from broker.backends import base, k8s_objects
from broker.dispatcher import pod_spec as pod_specs
from broker.dispatcher.limits import Limits

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
BACKEND = settings.Settings.from_env({
    "JOBQ_POD_SERVICE_ACCOUNT": "jobq-task",
    "JOBQ_POD_IMAGE_PULL_SECRETS": "regcred,mirror",
    "JOBQ_GPU_NODE_SELECTOR": "pool=gpu,nvidia.com/gpu.present=true",
    "JOBQ_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    "JOBQ_POD_NATS_SECRET": "jobq-pod-nats",
    "JOBQ_RESOURCE_PROFILES": '{"gpu": {"memory": "32Gi"}, "small": {"cpu": 0.25}}',
}).backend
LIMITS = Limits(nats_url="nats://nats:4222", profiles=BACKEND.resource_profiles)


def pod_spec(limits: Limits = LIMITS, **job: Any) -> contract.PodSpec:
    spec = contract.JobSpec.model_validate({"id": "j1", "task": "demo.sleep", **job})
    record = contract.JobRecord(spec=spec, submitted_at=NOW, updated_at=NOW)
    return pod_specs.build(record, contract.Attempt(number=1, pod="job-j1-1", created_at=NOW), limits)


def manifest(spec: contract.PodSpec, config: settings.BackendSettings = BACKEND) -> dict[str, Any]:
    """As KubernetesBackend.create_pod builds it."""
    return k8s_objects.pod_manifest(
        spec, namespace=config.namespace, image=config.image, allow_privileged=config.allow_privileged,
        service_account=config.pod_service_account, image_pull_secrets=config.image_pull_secrets,
        gpu_node_selector=config.gpu_node_selector, gpu_tolerations=config.gpu_tolerations,
        nats_secret=config.pod_nats_secret)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_gpu_pod_gets_the_gpu_node_selector_and_tolerations() -> None:
    pod = manifest(pod_spec(profile="gpu"))["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [TOLERATION]
    assert pod["containers"][0]["resources"]["limits"][k8s_objects.GPU_RESOURCE] == "1"
    explicit = manifest(pod_spec(resources={"cpu": 1, "memory": "1Gi", "gpu": 2}))["spec"]
    assert explicit["nodeSelector"] and explicit["tolerations"] == [TOLERATION]


@pytest.mark.parametrize("job", [{}, {"profile": "large"}, {"resources": {"cpu": 8, "memory": "8Gi"}}])
def test_cpu_pod_gets_no_gpu_selector_or_tolerations(job: dict[str, Any]) -> None:
    pod = manifest(pod_spec(**job))["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert k8s_objects.GPU_RESOURCE not in pod["containers"][0]["resources"]["requests"]


def test_image_pull_secrets_and_service_account() -> None:
    pod = manifest(pod_spec())["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert pod["serviceAccountName"] == "jobq-task"
    # A named account decides about its token itself (its automountServiceAccountToken).
    assert "automountServiceAccountToken" not in pod


def test_defaults_add_nothing_and_mount_no_token() -> None:
    pod = manifest(pod_spec(), settings.BackendSettings())
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "volumes"):
        assert key not in spec
    assert "volumeMounts" not in spec["containers"][0]
    assert env_of(pod)["JOBQ_NATS_URL"] == "nats://nats:4222"
    assert not {"JOBQ_NATS_CREDS", "JOBQ_NATS_USER", "JOBQ_NATS_TOKEN"} & set(env_of(pod))
    # No GPU settings: a GPU pod gets no selector or tolerations either.
    assert "tolerations" not in manifest(pod_spec(profile="gpu"), settings.BackendSettings())["spec"]


def test_nats_secret_becomes_optional_env_and_a_read_only_creds_file() -> None:
    pod = manifest(pod_spec())
    env = env_of(pod)
    for name, key in (("JOBQ_NATS_USER", "user"), ("JOBQ_NATS_PASSWORD", "password"),
                      ("JOBQ_NATS_TOKEN", "token")):
        assert env[name] == {"secretKeyRef": {"name": "jobq-pod-nats", "key": key, "optional": True}}
    assert env["JOBQ_NATS_CREDS"] == contract.POD_NATS_CREDS_PATH == "/etc/jobq/nats/nats.creds"
    assert env["JOBQ_NATS_URL"] == "nats://nats:4222"
    container = pod["spec"]["containers"][0]
    assert container["volumeMounts"] == [
        {"name": "nats-auth", "mountPath": "/etc/jobq/nats", "readOnly": True}]
    assert pod["spec"]["volumes"] == [{"name": "nats-auth", "secret": {
        "secretName": "jobq-pod-nats", "optional": True, "items": [{"key": "creds", "path": "nats.creds"}]}}]
    assert len([e for e in container["env"] if e["name"] == "JOBQ_NATS_CREDS"]) == 1


def test_profile_override_changes_requests() -> None:
    gpu = manifest(pod_spec(profile="gpu"))["spec"]["containers"][0]["resources"]
    assert gpu["requests"] == {"cpu": "4000m", "memory": "32Gi", k8s_objects.GPU_RESOURCE: "1"}
    assert gpu["limits"]["memory"] == "32Gi"
    # `small` is also the profile of jobs that name none; explicit resources are never overridden.
    assert manifest(pod_spec())["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "250m"
    explicit = manifest(pod_spec(resources={"cpu": 2, "memory": "1Gi"}))["spec"]["containers"][0]
    assert explicit["resources"]["requests"] == {"cpu": "2000m", "memory": "1Gi"}
    # Not overridden: the built-in profile; no operator table: the built-in profiles.
    assert pod_spec(profile="medium").resources == contract.PROFILES["medium"]
    assert pod_spec(Limits(), profile="gpu").resources == contract.PROFILES["gpu"]


def test_hardening_is_kept_with_every_default() -> None:
    pod = manifest(pod_spec(profile="gpu"))
    ctx = pod["spec"]["containers"][0]["securityContext"]
    assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
    assert ctx["runAsNonRoot"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
    assert all("hostPath" not in v for v in pod["spec"]["volumes"])
    pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    with pytest.raises(base.PodRejected, match="hostPath"):
        k8s_objects.validate(pod, allow_privileged=False)


def test_runner_ignores_the_pod_creds_path_only_when_the_secret_has_no_creds_key() -> None:
    from workers import runner_settings

    env = {"JOBQ_JOB_ID": "j1", "JOBQ_ATTEMPT": "1", "JOBQ_TASK": "demo.sleep",
           "JOBQ_NATS_CREDS": contract.POD_NATS_CREDS_PATH, "JOBQ_NATS_TOKEN": "t"}
    assert runner_settings.RunnerSettings.from_env(env).auth == {"token": "t"}  # no file at that path here
    other = runner_settings.RunnerSettings.from_env({**env, "JOBQ_NATS_CREDS": "/elsewhere/x.creds"}).auth
    assert other["user_credentials"] == "/elsewhere/x.creds"
