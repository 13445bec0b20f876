"""JOBQ_NATS_SYNC: how the embedded nats-server's fsync policy is chosen (issue 12)."""

from __future__ import annotations

import pytest

from broker.embedded.natsserver import NatsServerError, config_text, sync_always_from_env
from broker.embedded.stack import StackConfig


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("", True), ("always", True), (" Always ", True), ("default", False)],
)
def test_sync_setting(value: str | None, expected: bool) -> None:
    assert sync_always_from_env({} if value is None else {"JOBQ_NATS_SYNC": value}) is expected


def test_a_bad_sync_setting_names_the_variable_and_the_choices() -> None:
    with pytest.raises(NatsServerError, match=r"JOBQ_NATS_SYNC='sometimes'.*'always'.*'default'"):
        sync_always_from_env({"JOBQ_NATS_SYNC": "sometimes"})


def test_stack_config_takes_its_default_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBQ_NATS_SYNC", raising=False)
    assert StackConfig().nats_sync_always is True
    monkeypatch.setenv("JOBQ_NATS_SYNC", "default")
    assert StackConfig().nats_sync_always is False
    assert StackConfig(nats_sync_always=True).nats_sync_always is True


def test_config_file() -> None:
    def settings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    assert settings(config_text(sync_always=True)) == ["jetstream {", "  sync_interval: always", "}"]
    assert settings(config_text(sync_always=False)) == []
