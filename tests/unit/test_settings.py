"""Settings come from JOBQ_* variables; a bad value names the variable."""

from __future__ import annotations

import pytest

from broker import settings


def test_defaults() -> None:
    config = settings.Settings.from_env({})
    assert config.dispatcher.node_timeout_s == 3.0 and config.http.port == 8222
    assert config.backend.kind == "local" and not config.backend.allow_privileged


def test_queue_limits_and_policies() -> None:
    config = settings.Settings.from_env(
        {
            "JOBQ_QUEUE_LIMITS": "gpu=2, default=50",
            "JOBQ_QUEUE_POLICIES": '{"gpu": {"max_attempts": 5, "backoff_cap_s": 300}}',
        }
    )
    assert config.dispatcher.queue_limits == {"gpu": 2, "default": 50}
    assert config.dispatcher.queue_policies["gpu"].max_attempts == 5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBQ_NODE_TIMEOUT_S": "soon"}, "JOBQ_NODE_TIMEOUT_S='soon' is not a number"),
        ({"JOBQ_QUEUE_LIMITS": "gpu"}, "JOBQ_QUEUE_LIMITS entry 'gpu'"),
        ({"JOBQ_QUEUE_POLICIES": '{"gpu": {"max_attempts": 0}}'}, "JOBQ_QUEUE_POLICIES"),
        ({"JOBQ_BACKEND": "nomad"}, "JOBQ_BACKEND must be local or kubernetes"),
        ({"JOBQ_RESCHEDULE_ON_NODE_LOSS": "maybe"}, "must be true or false"),
        ({"JOBQ_NATS_REPLICAS": "2"}, "must be 1, 3 or 5"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingsError, match=message.replace("(", r"\(")):
        settings.Settings.from_env(env)


def test_task_pod_defaults() -> None:
    backend = settings.Settings.from_env(
        {
            "JOBQ_POD_SERVICE_ACCOUNT": "jobq-task",
            "JOBQ_POD_IMAGE_PULL_SECRETS": "regcred, other-registry ,",
            "JOBQ_GPU_NODE_SELECTOR": "nvidia.com/gpu.present=true, pool=gpu",
            "JOBQ_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists",'
            ' "effect": "NoSchedule"},'
            ' {"key": "spot", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60}]',
            "JOBQ_POD_NATS_SECRET": "jobq-pod-nats",
            "JOBQ_RESOURCE_PROFILES": '{"gpu": {"memory": "32Gi", "gpu": 2}, "small": {"cpu": 0.25}}',
        }
    ).backend
    assert backend.pod_service_account == "jobq-task"
    assert backend.image_pull_secrets == ("regcred", "other-registry")
    assert dict(backend.gpu_node_selector) == {"nvidia.com/gpu.present": "true", "pool": "gpu"}
    assert [t["key"] for t in backend.gpu_tolerations] == ["nvidia.com/gpu", "spot"]
    assert backend.pod_nats_secret == "jobq-pod-nats"
    gpu, small = backend.resource_profiles["gpu"], backend.resource_profiles["small"]
    assert (gpu.cpu, gpu.memory, gpu.gpu) == (4, "32Gi", 2)  # cpu kept from the built-in profile
    assert (small.cpu, small.memory, small.gpu) == (0.25, "512Mi", 0)


def test_task_pod_defaults_are_empty_by_default() -> None:
    backend = settings.Settings.from_env({}).backend
    assert backend.pod_service_account == "" and backend.image_pull_secrets == ()
    assert not backend.gpu_node_selector and backend.gpu_tolerations == ()
    assert backend.pod_nats_secret == "" and not backend.resource_profiles


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBQ_POD_SERVICE_ACCOUNT": "Jobq_Task"}, "JOBQ_POD_SERVICE_ACCOUNT: 'Jobq_Task'"),
        ({"JOBQ_POD_IMAGE_PULL_SECRETS": "ok,not ok"}, "JOBQ_POD_IMAGE_PULL_SECRETS: 'not ok'"),
        ({"JOBQ_POD_NATS_SECRET": "-x"}, "JOBQ_POD_NATS_SECRET"),
        ({"JOBQ_GPU_NODE_SELECTOR": "pool"}, "JOBQ_GPU_NODE_SELECTOR entry 'pool' is not label=value"),
        ({"JOBQ_GPU_NODE_SELECTOR": "pool=a b"}, "JOBQ_GPU_NODE_SELECTOR: pool=a b is not a valid label"),
        ({"JOBQ_GPU_TOLERATIONS": "[{"}, "JOBQ_GPU_TOLERATIONS is not JSON"),
        ({"JOBQ_GPU_TOLERATIONS": '{"key": "a"}'}, "JOBQ_GPU_TOLERATIONS must be a JSON list"),
        ({"JOBQ_GPU_TOLERATIONS": '[{"key": "a", "effekt": "NoSchedule"}]'}, "unknown keys \\['effekt'\\]"),
        ({"JOBQ_GPU_TOLERATIONS": '[{"key": "a", "operator": "In"}]'}, "operator other than Equal or Exists"),
        ({"JOBQ_GPU_TOLERATIONS": '[{"key": "a", "operator": "Exists", "value": "b"}]'}, "value with"),
        ({"JOBQ_GPU_TOLERATIONS": '[{"operator": "Equal", "value": "b"}]'}, "has no key"),
        ({"JOBQ_GPU_TOLERATIONS": '[{"key": "a", "effect": "Never"}]'}, "has an effect not in"),
        ({"JOBQ_GPU_TOLERATIONS": '[{"key": "a", "tolerationSeconds": 5}]'}, "tolerationSeconds"),
        ({"JOBQ_RESOURCE_PROFILES": '{"huge": {"cpu": 64}}'}, "JOBQ_RESOURCE_PROFILES: only the built-in"),
        ({"JOBQ_RESOURCE_PROFILES": '{"gpu": {"memory": "lots"}}'}, "JOBQ_RESOURCE_PROFILES: .*memory"),
        ({"JOBQ_RESOURCE_PROFILES": '{"gpu": {"cpus": 2}}'}, "JOBQ_RESOURCE_PROFILES: .*cpus"),
        ({"JOBQ_RESOURCE_PROFILES": '["gpu"]'}, "JOBQ_RESOURCE_PROFILES: not a JSON object"),
    ],
)
def test_bad_task_pod_defaults_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingsError, match=message):
        settings.Settings.from_env(env)


def test_backend_settings_validate_when_built_directly() -> None:
    with pytest.raises(settings.SettingsError, match="JOBQ_RESOURCE_PROFILES may only override"):
        settings.BackendSettings(resource_profiles={"huge": settings.contract.Resources()})
    with pytest.raises(settings.SettingsError, match="JOBQ_GPU_TOLERATIONS"):
        settings.BackendSettings(gpu_tolerations=({"operator": "Sometimes"},))
