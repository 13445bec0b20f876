"""The chart's alert and recording rules: valid (promtool check rules), the same in the
PrometheusRule and in the plain file, thresholds from values, and every Grafana query, recording
rule and alert checked against recorded series (tests/metrics/recorded/, replayed here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

from tests.helm.conftest import render
from tests.metrics import expectations, promql

pytestmark = pytest.mark.timeout(600)
"""600 s: a cold run builds promtool (about 5 minutes on 2 cores); these tests take seconds."""

RECORDINGS = sorted(promql.RECORDED.glob("*.test.yaml"))


def _check(promtool: Path, path: Path) -> str:
    out = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_plain_rules_file_is_the_chart_at_its_defaults(helm: Path, promtool: Path) -> None:
    assert not [d for d in render(helm) if d["kind"] == "PrometheusRule"], "off unless enabled"
    spec = promql.render_rules(helm, {"prometheusRule.enabled": "true"})
    assert yaml.safe_load(promql.RULES.read_text()) == spec
    assert "SUCCESS: 11 rules found" in _check(promtool, promql.RULES)


def test_thresholds_come_from_values(helm: Path, promtool: Path, tmp_path: Path) -> None:
    spec = promql.render_rules(helm, promql.TEST_VALUES)
    assert yaml.safe_load(promql.TEST_RULES.read_text()) == spec, "re-render the recorded rules"
    _check(promtool, promql.write_rules(tmp_path / "rules.yaml", spec))
    custom = promql.render_rules(
        helm,
        {
            "prometheusRule.enabled": "true",
            "prometheusRule.labels.release": "kube-prometheus",
            "prometheusRule.queueAge.thresholdSeconds": "120",
            "prometheusRule.queueAge.for": "10m",
            "prometheusRule.deadJobs.window": "1h",
            "prometheusRule.deadJobs.threshold": "0",
        },
    )
    stalled = promql.alert_rule(custom, "JobqQueueStalled")
    assert stalled["expr"] == "max by (queue) (jobq_oldest_waiting_seconds) > 120"
    assert stalled["for"] == "10m"
    dying = promql.alert_rule(custom, "JobqJobsDying")["expr"]
    assert dying == 'sum by (queue) (increase(jobq_jobs_finished_total{outcome="dead"}[1h])) > 0'
    [doc] = render(
        helm,
        {"prometheusRule.enabled": "true", "prometheusRule.labels.release": "kube-prometheus"},
        extra=["--show-only", "templates/prometheusrule.yaml"],
    )
    assert doc["metadata"]["labels"]["release"] == "kube-prometheus"


def test_every_query_rule_and_alert_is_checked_on_recorded_series() -> None:
    """A new panel, recording rule or alert fails here until tests/metrics/expectations.py says
    what it must return and a recording (JOBQ_RECORD_METRICS=1) checks it."""
    assert {p.name for p in RECORDINGS} == {"two-dispatchers.test.yaml", "failover.test.yaml"}
    tested, firing = promql.covered(RECORDINGS)
    rules = promql.rules()
    wanted = promql.board_exprs() + [r["record"] for r in rules if "record" in r]
    assert wanted
    for expr in wanted:
        assert expr in expectations.CHECKS, f"no expectation for {expr!r}"
        assert any(expr in t for t in tested), f"{expr!r} is in no recorded promtool test"
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert alerts == firing, f"alerts never seen firing on recorded series: {alerts - firing}"


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.name)
def test_recorded_series_pass(promtool: Path, recording: Path) -> None:
    promql.run_promtool_test(promtool, recording)
