"""Chaos experiments run for real: Chaos Toolkit in the main thread, the stack in a background
thread (see chaos.runner). Each test starts its own stack in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> Iterator[None]:
    """Overrides the asyncio leak check: these tests are synchronous (Chaos Toolkit owns the run)."""
    yield


def assert_passed(journal: dict[str, Any]) -> None:
    """The whole journal, not just the status: completed is not a pass."""
    assert journal["status"] == "completed", journal["status"]
    assert journal["deviated"] is False
    for phase in ("before", "after"):
        ssh = journal["steady_states"][phase]
        assert ssh is not None and ssh["steady_state_met"] is True, (
            phase,
            [(p["activity"]["name"], p["output"]) for p in ssh["probes"] if not p["tolerance_met"]],
        )
    for run in journal["run"] + journal["rollbacks"]:
        assert run["status"] == "succeeded", (run["activity"]["name"], run.get("exception", [""])[-1])
