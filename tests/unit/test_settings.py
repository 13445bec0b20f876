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
