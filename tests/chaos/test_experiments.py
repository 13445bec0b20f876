"""Every bundled experiment against a real embedded stack, plus the negative control."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos import runner
from tests.chaos.conftest import assert_passed

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]


def run(name: str, tmp_path: Path, **kwargs: Any) -> runner.Outcome:
    outcome = runner.run(
        name,
        journal_path=tmp_path / "journal.json",
        report_path=tmp_path / "report.html",
        data_dir=tmp_path / "stack",
        config_vars={"timeout_s": 60.0},
        **kwargs,
    )
    for rec in outcome.snapshot["recoveries"]:
        print(
            f"{name}: {rec['kind']} {rec['target']} recovery {rec['seconds']}s "
            f"({rec.get('affected_jobs', '-')} job(s) moved); run took {outcome.seconds}s"
        )
    check = outcome.snapshot.get("exactly_once") or {}
    print(f"{name}: checker {check.get('summary')}")
    return outcome


def assert_checked(outcome: runner.Outcome) -> dict[str, int]:
    """The steady state after the method was judged by the checker over the whole burst."""
    check = outcome.snapshot.get("exactly_once")
    assert check, "the exactly-once checker did not judge the run"
    summary: dict[str, int] = check["summary"]
    assert summary["jobs"] == len(outcome.snapshot["jobs"]) > 0, summary
    assert summary["defects"] == 0 and summary["ran"] >= summary["jobs"], check
    return summary


def disruptions(outcome: runner.Outcome, kind: str) -> list[dict[str, Any]]:
    return [d for d in outcome.snapshot["disruptions"] if d["kind"] == kind]


def retries(outcome: runner.Outcome) -> dict[str, int]:
    found: dict[str, int] = {}
    for job in outcome.snapshot["jobs"].values():
        for reason, n in job["record"]["retries"].items():
            found[reason] = found.get(reason, 0) + n
    return found


def test_node_kill(tmp_path: Path) -> None:
    outcome = run("node-kill", tmp_path)
    assert_passed(outcome.journal)
    # The kill hit tasks that had begun (ledger start lines), so some ran twice:
    assert assert_checked(outcome)["reruns"] >= 1
    (killed,) = disruptions(outcome, "node_kill")
    assert outcome.snapshot["recoveries"][0]["affected_jobs"] > 0, "the killed node ran none of the burst"
    assert retries(outcome).get("node_lost", 0) >= 1
    assert all(j["record"]["app_failures"] == 0 for j in outcome.snapshot["jobs"].values())
    # The report names the killed node and the affected jobs.
    html = (tmp_path / "report.html").read_text()
    assert "PASSED" in html and killed["target"] in html and "Exactly once (independent checker)" in html
    for pod in killed["pods"]:
        assert pod.rpartition("#")[0] in html


def test_node_kill_majority(tmp_path: Path) -> None:
    outcome = run("node-kill-majority", tmp_path)
    assert_passed(outcome.journal)
    assert_checked(outcome)
    assert len(disruptions(outcome, "node_kill")) == 2


def test_node_partition(tmp_path: Path) -> None:
    outcome = run("node-partition", tmp_path)
    assert_passed(outcome.journal)
    # Frozen mid-task, the superseded attempts finish when the partition heals (their sleep is
    # overdue) and write a result, an artifact and a ledger line: fencing is really exercised.
    assert assert_checked(outcome)["stale_writes"] >= 1, "no stale attempt wrote after the partition"
    (partition,) = disruptions(outcome, "partition")
    moved = [j for j in outcome.snapshot["jobs"].values() if len(j["record"]["attempts"]) > 1]
    assert moved, "nothing moved off the partitioned node"
    for job in moved:
        assert job["record"]["attempts"][0]["node"] == partition["target"]
        assert job["record"]["result_attempt"] == len(job["record"]["attempts"])


def test_dispatcher_kill(tmp_path: Path) -> None:
    outcome = run("dispatcher-kill", tmp_path)
    assert_passed(outcome.journal)
    assert_checked(outcome)
    (kill,) = disruptions(outcome, "dispatcher_kill")
    assert kill["new_holder"] != kill["holder"]


def test_broker_kill(tmp_path: Path) -> None:
    outcome = run("broker-kill", tmp_path)
    assert_passed(outcome.journal)
    assert_checked(outcome)
    (kill,) = disruptions(outcome, "nats_kill")
    assert kill.get("restarted_at"), "the killed nats-server was not restarted"


def test_rolling_node_kill(tmp_path: Path) -> None:
    outcome = run("rolling-node-kill", tmp_path)
    assert_passed(outcome.journal)
    assert_checked(outcome)
    kills = disruptions(outcome, "node_kill")
    assert len(kills) == 3 and all(k.get("restarted_at") for k in kills)
    assert sum(r["affected_jobs"] for r in outcome.snapshot["recoveries"]) > 0, outcome.snapshot["recoveries"]


def test_negative_control_node_kill_deviates_without_rescheduling(tmp_path: Path) -> None:
    """An experiment that cannot fail proves nothing: with node-loss rescheduling switched off,
    `jobq chaos run node-kill` must deviate (the killed node's jobs never finish) and exit 1."""
    journal_path, report_path = tmp_path / "journal.json", tmp_path / "report.html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "submitter.cli",
            "chaos",
            "run",
            "node-kill",
            "--journal",
            str(journal_path),
            "--report",
            str(report_path),
            "--data-dir",
            str(tmp_path / "stack"),
            "--env",
            "JOBQ_RESCHEDULE_ON_NODE_LOSS=0",
            "--var",
            "timeout_s=10",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "JOBQ_LOG_FORMAT": "json"},
    )
    print(result.stdout)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "node-kill: FAILED" in result.stdout
    journal = json.loads(journal_path.read_text())
    assert journal["status"] == "completed" and journal["deviated"] is True
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    failed = {
        p["activity"]["name"]: p["output"]
        for p in journal["steady_states"]["after"]["probes"]
        if not p["tolerance_met"]
    }
    assert failed.get("exactly-once", 0) > 0, failed  # Chaos Toolkit stops at the first unmet probe
    state = json.loads(next((tmp_path / "stack" / "chaos").glob("*.json")).read_text())
    (check,) = state["checks"][-1:]
    assert check["summary"]["lost"] > 0 and check["flagged"]["lost"], check  # the checker can fail
    states = next(r["output"] for r in journal["run"] if r["activity"]["name"] == "jobs-by-state")
    assert states.get("running", 0) > 0, states  # the killed node's jobs never finished
    html = report_path.read_text()
    assert "DEVIATED" in html and check["flagged"]["lost"][0] in html
    killed = next(
        r["output"]["killed"][0] for r in journal["run"] if r["activity"]["name"] == "kill-busiest-node"
    )
    assert killed["target"] in html
