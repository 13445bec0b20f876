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
    }
    for name in names:
        ensure_experiment_is_valid(load_experiment(str(runner.experiment_path(name))))


def test_discovery_lists_actions_and_probes() -> None:
    found = {(a["type"], a["name"]) for a in discover()["activities"]}
    assert ("action", "kill_nodes") in found and ("probe", "duplicate_results") in found


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
        "lost_jobs",
    } <= names
