"""`jobq chaos list`, `chaos discover`-style discovery, validation of every experiment, and the
report from a journal alone. Fast: no stack."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaos import discover, report, runner

pytestmark = pytest.mark.chaos


def test_every_bundled_experiment_is_valid() -> None:
    from chaoslib.experiment import ensure_experiment_is_valid
    from chaoslib.loader import load_experiment

    names = [name for name, _ in runner.list_experiments()]
    assert set(names) >= {
        "node-kill",
        "node-kill-majority",
        "node-partition",
        "dispatcher-kill",
        "broker-kill",
        "rolling-node-kill",
        "node-kill-training",
    }
    for name in names:
        ensure_experiment_is_valid(load_experiment(str(runner.experiment_path(name))))


def test_discovery_lists_actions_and_probes() -> None:
    found = {(a["type"], a["name"]) for a in discover()["activities"]}
    assert ("action", "kill_nodes") in found and ("probe", "exactly_once_defects") in found
    assert ("probe", "stale_pods_left") in found


def test_jobq_chaos_list() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "submitter.cli", "chaos", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "node-kill " in out and "broker-kill" in out


def test_unknown_experiment_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "submitter.cli", "chaos", "run", "no-such-thing"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "no experiment 'no-such-thing'" in result.stderr


def test_problems_catch_more_than_the_status() -> None:
    journal = {
        "status": "completed",
        "deviated": False,
        "steady_states": {"before": {"steady_state_met": True, "probes": []}, "after": None},
        "run": [{"activity": {"name": "kill"}, "status": "failed", "exception": ["boom"]}],
        "rollbacks": [],
    }
    found = runner.problems(journal)
    assert any("after" in p for p in found) and any("kill failed" in p for p in found)


def test_report_from_the_journal_alone_names_the_killed_node() -> None:
    killed = {
        "kind": "node_kill",
        "target": "node-2",
        "pid": 42,
        "signal": "SIGKILL",
        "at": "2026-01-01T00:00:00+00:00",
        "pods": ["job-a#1"],
    }
    journal = {
        "status": "completed",
        "deviated": True,
        "experiment": {"title": "t <x>"},
        "steady_states": {},
        "run": [
            {
                "activity": {"name": "kill", "type": "action"},
                "status": "succeeded",
                "output": {"killed": [killed]},
            }
        ],
    }
    html = report.render(journal, None, problems=["the steady state deviated"])
    assert "node-2" in html and "DEVIATED" in html and "t &lt;x&gt;" in html
    json.dumps(journal)


def test_chaos_discover_finds_the_extension(tmp_path: Path) -> None:
    """`chaos discover jobq` works on the installed distribution (no install, no network)."""
    chaos_cli = shutil.which("chaos") or str(Path(sys.executable).parent / "chaos")
    out = subprocess.run(
        [chaos_cli, "--no-version-check", "discover", "--no-install", "--no-system-info", "jobq"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    discovered = json.loads((tmp_path / "discovery.json").read_text())
    names = {a["name"] for a in discovered["activities"]}
    assert {
        "kill_nodes",
        "partition_node",
        "kill_dispatcher_leader",
        "kill_nats_server",
        "exactly_once_defects",
    } <= names


def test_every_experiment_judges_exactly_once_with_the_checker() -> None:
    """No steady state counts events any more: each one has the checker's probe, tolerance 0."""
    for name, _ in runner.list_experiments():
        experiment = json.loads(runner.experiment_path(name).read_text())
        probes = experiment["steady-state-hypothesis"]["probes"]
        funcs = {p["provider"]["func"]: p for p in probes}
        assert funcs["exactly_once_defects"]["tolerance"] == 0, name
        assert not {"lost_jobs", "duplicate_results", "unfenced_stale_attempts"} & set(funcs), name
        method = [a["provider"]["func"] for a in experiment["method"]]
        assert "submit_burst" in method, name


def test_report_shows_the_checkers_findings() -> None:
    check = {
        "at": "2026-01-01T00:00:05+00:00",
        "summary": {"jobs": 12, "lost": 1, "duplicated": 0, "unproven": 2, "stale_visible": 1,
                    "defects": 4, "stale_writes": 3, "ran": 15, "reruns": 3},
        "flagged": {"lost": ["c1-0003"], "duplicated": [], "unproven": ["c1-0004", "c1-0005"],
                    "stale_visible": ["c1-0006"]},
        "details": {"c1-0006": ["stale_visible: readers get artifact b'old', not new"]},
    }
    journal = {"status": "completed", "deviated": True, "experiment": {"title": "t"}, "steady_states": {}}
    html = report.render(journal, {"jobs": {}, "exactly_once": check})
    assert "Exactly once (independent checker)" in html
    for figure in ("c1-0003", "c1-0004", "c1-0006", "stale writes <b>3</b>", "defects <b>4</b>",
                   "readers get artifact"):
        assert figure in html, figure
    assert "did not judge" in report.render(journal, {"jobs": {}})


def test_the_checker_is_loaded_from_the_checkout() -> None:
    from chaos import target

    checker = target.load_checker()
    assert callable(checker.check) and callable(checker.submit_witnessed)
    assert set(checker.FINDINGS) == {"lost", "duplicated", "unproven", "stale_visible"}


def test_a_missing_checker_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from chaos import target

    monkeypatch.delitem(sys.modules, "jobq_exactly_once_checker", raising=False)
    monkeypatch.setenv(target.CHECKER_ENV, str(tmp_path / "nowhere.py"))
    with pytest.raises(target.ChaosError, match="jobq checkout"):
        target.load_checker()
