"""`node-kill-training` with real Chaos Toolkit against a real embedded stack: a training job that
checkpoints every epoch loses at most one interval plus detection to a node kill; the negative
control (checkpoint=false, the same kill) loses its whole run so far and must deviate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos import runner
from tests.chaos.conftest import assert_passed

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]


def run(tmp_path: Path, **config: Any) -> runner.Outcome:
    return runner.run("node-kill-training", journal_path=tmp_path / "journal.json",
                      report_path=tmp_path / "report.html", data_dir=tmp_path / "stack",
                      config_vars=config or None)


def figures(outcome: runner.Outcome) -> dict[str, Any]:
    """The method's work-lost probe: the one failure, judged from the pods' evidence."""
    (run_,) = [r for r in outcome.journal["run"] if r["activity"]["name"] == "work-lost"]
    (failure,) = run_["output"]
    print(f"node-kill-training: {failure}; run took {outcome.seconds}s")
    return dict(failure)


def test_node_kill_training_loses_at_most_one_interval(tmp_path: Path) -> None:
    outcome = run(tmp_path)
    assert_passed(outcome.journal)
    f = figures(outcome)
    (kill,) = [d for d in outcome.snapshot["disruptions"] if d["kind"] == "node_kill"]
    assert kill["training_job"] == f["job_id"] and kill["target"] == f["node"]
    # The kill came after >= 8 checkpoints (the pointer the action read), and the replacement
    # resumed from the newest one.
    assert kill["pointer_at_kill"]["owner"] == 1 and kill["pointer_at_kill"]["seq"] >= 8
    assert f["saved_step"] is not None and f["resumed_step"] == f["saved_step"]
    assert f["redone_epochs"] == f["epochs"] - f["saved_step"], f  # it really went on from there
    assert len(kill["checkpoint_times"]) >= 8
    assert 0 <= f["work_lost_s"] <= f["bound_s"] and f["dispatcher_work_lost_s"] <= f["bound_s"]
    record = outcome.snapshot["jobs"][f["job_id"]]["record"]
    assert record["phase"] == "succeeded" and [a["node"] == kill["target"] for a in record["attempts"]] == [
        True, False]
    html = (tmp_path / "report.html").read_text()
    assert "PASSED" in html and "work lost" in html


def test_node_kill_training_without_checkpoints_deviates(tmp_path: Path) -> None:
    """The negative control: the same kill of a job that saves nothing must deviate on work lost
    (and only there: it still succeeds, from scratch)."""
    outcome = run(tmp_path, checkpoint=False)
    journal = outcome.journal
    assert journal["status"] == "completed" and journal["deviated"] is True
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    after = {p["activity"]["name"]: p for p in journal["steady_states"]["after"]["probes"]}
    assert after["training-succeeded"]["tolerance_met"] is True
    assert after["resumed-from-newest-checkpoint"]["tolerance_met"] is True
    assert after["work-lost-within-one-interval-plus-detection"]["tolerance_met"] is False
    for r in journal["run"] + journal["rollbacks"]:
        assert r["status"] == "succeeded", (r["activity"]["name"], r.get("exception", [""])[-1])
    f = figures(outcome)
    assert f["saved_step"] is None and f["resumed_step"] is None
    assert f["work_lost_s"] > f["bound_s"], f
    assert "DEVIATED" in (tmp_path / "report.html").read_text()
