"""Turn scrapes of several dispatchers into ``promtool test rules`` files, and run them.

A *recording* is a list of instants; at each one every dispatcher's /metrics was scraped (or
could not be: a paused or killed one). Instant ``k`` is minute ``k`` of the promtool timeline,
each dispatcher is one ``instance`` (``job="jobq"``), and a series gone from a scrape (or whose
dispatcher did not answer) gets a staleness marker, then no samples, as Prometheus stores it:
without the marker an instant query would still see its last value for 5 minutes.

Also here: Prometheus's own ``histogram_quantile`` interpolation and ``humanize`` /
``humanizeDuration`` formatting, to state expected values from evidence, not from the metrics.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

from tests.http.helpers import Samples

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "helm/jobq/dashboards/jobq-grafana.json"
RULES = ROOT / "helm/jobq/rules/jobq-rules.yaml"
RECORDED = Path(__file__).resolve().parent / "recorded"
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "metrics"
"""Where each run's promtool files are left to read (not committed)."""
TEST_RULES = RECORDED / "rules-test-thresholds.yaml"
"""The chart's rules rendered with ``TEST_VALUES`` (tests/metrics/test_rules_files.py keeps it
equal to a fresh render)."""

TEST_VALUES = {
    "prometheusRule.enabled": "true",
    "prometheusRule.noLeader.for": "0m",
    "prometheusRule.deadJobs.window": "5m",
    "prometheusRule.deadJobs.threshold": "1",
    "prometheusRule.deadJobs.for": "0m",
    "prometheusRule.retries.window": "5m",
    "prometheusRule.retries.threshold": "3",
    "prometheusRule.retries.for": "0m",
    "prometheusRule.nodeLost.for": "0m",
    "prometheusRule.queueAge.thresholdSeconds": "1",
    "prometheusRule.queueAge.for": "0m",
}
"""Thresholds a recording of a few seconds can cross (the defaults are for production: minutes).
Windows of 5m cover a whole recording, whose instants are a minute apart."""

ALL_QUEUES = ".*"
"""What the board's ``$queue`` variable is set to ("All")."""


@dataclasses.dataclass
class Recording:
    instances: Sequence[str]
    scrapes: list[dict[str, Samples | None]] = dataclasses.field(default_factory=list)
    """Per instant: instance -> its samples, or None when it did not answer."""

    def add(self, scrape: Mapping[str, Samples | None]) -> int:
        """Record an instant; its minute on the promtool timeline."""
        self.scrapes.append(dict(scrape))
        return len(self.scrapes) - 1

    def input_series(self) -> list[dict[str, str]]:
        keys: set[tuple[str, str, frozenset[tuple[str, str]]]] = set()
        for instant in self.scrapes:
            for instance, samples in instant.items():
                keys.update((instance, name, labels) for name, labels in (samples or {}))
        series = []
        for instance, name, labels in sorted(keys, key=lambda k: (k[0], k[1], sorted(k[2]))):
            values: list[str] = []
            for instant in self.scrapes:
                samples = instant.get(instance)
                found = samples.get((name, labels)) if samples is not None else None
                if found is not None:
                    values.append(number(found))
                else:  # Prometheus marks a series stale once it is gone, or its target is
                    values.append("stale" if values and values[-1] not in ("_", "stale") else "_")
            full = {**dict(labels), "instance": instance, "job": "jobq"}
            series.append({"series": series_name(name, full), "values": " ".join(values)})
        return series


def series_name(name: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def labels_text(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


def write_test_file(
    path: Path,
    *,
    recording: Recording,
    rule_file: Path,
    exprs: Iterable[dict[str, Any]],
    alerts: Iterable[dict[str, Any]],
    comment: str,
) -> None:
    doc = {
        "rule_files": [os.path.relpath(rule_file, path.parent)],
        "evaluation_interval": "1m",
        "fuzzy_compare": True,
        "tests": [
            {
                "interval": "1m",
                "input_series": recording.input_series(),
                "promql_expr_test": list(exprs),
                "alert_rule_test": list(alerts),
            }
        ],
    }
    text = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(text + yaml.safe_dump(doc, sort_keys=False, width=200))


def run_promtool_test(promtool: Path, test_file: Path) -> None:
    out = subprocess.run(
        [str(promtool), "test", "rules", test_file.name],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"promtool test rules {test_file} failed:\n{out.stdout}{out.stderr}"


def check_recording(promtool: Path, test_file: Path) -> None:
    """Run the promtool test written from a live recording; keep a copy in test-output/metrics/,
    and, with ``JOBQ_RECORD_METRICS=1``, make it the committed recording that
    test_rules_files.py replays."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(test_file, OUTPUT / test_file.name)
    run_promtool_test(promtool, test_file)
    if os.environ.get("JOBQ_RECORD_METRICS") == "1":
        shutil.copy(test_file, RECORDED / test_file.name)


def sample(labels: Mapping[str, str], value: float) -> dict[str, Any]:
    return {"labels": labels_text(labels), "value": value}


# --- what the board and the rules ask ----------------------------------------------------------


def board_exprs(board: Path = BOARD) -> list[str]:
    """Every query of the Grafana board, with ``$queue`` set to All."""
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(t["expr"].replace("$queue", ALL_QUEUES) for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(json.loads(board.read_text())["panels"])
    return found


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def covered(test_files: Iterable[Path]) -> tuple[list[str], set[str]]:
    """(every promql_expr_test expr, every alert name with an expected firing) of the files."""
    exprs: list[str] = []
    firing: set[str] = set()
    for path in test_files:
        for group in yaml.safe_load(path.read_text())["tests"]:
            exprs += [case["expr"] for case in group.get("promql_expr_test", [])]
            firing |= {case["alertname"] for case in group.get("alert_rule_test", []) if case["exp_alerts"]}
    return exprs, firing


# --- Prometheus's arithmetic, to state expectations from evidence ------------------------------


def bucket_counts(observations: Iterable[float], bounds: Sequence[float]) -> list[tuple[float, int]]:
    """Cumulative (upper bound, count) of a histogram with ``bounds`` (plus +Inf)."""
    values = sorted(observations)
    found = [(b, bisect.bisect_right(values, b)) for b in bounds]
    return [*found, (math.inf, len(values))]


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's ``bucketQuantile`` (promql/quantile.go) on cumulative buckets."""
    if len(buckets) < 2 or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    b = next((i for i in range(len(buckets) - 1) if buckets[i][1] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / count)


def prom_round(value: float, to_nearest: float = 1.0) -> float:
    """PromQL ``round(v, to_nearest)``."""
    inverse = 1.0 / to_nearest
    return math.floor(value * inverse + 0.5) / inverse


def humanize(value: float) -> str:
    """Go template ``humanize`` for values below 1000 (counts of a test run)."""
    assert 0 <= value < 1000, value
    return _go_g(value)


def humanize_duration(value: float) -> str:
    """Go template ``humanizeDuration`` (template/template.go) for values >= 1 s."""
    assert value >= 1, value
    seconds = int(value)
    days, hours = seconds // 86400, seconds // 3600 % 24
    minutes, seconds = seconds // 60 % 60, seconds % 60
    if days:
        return f"{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{_go_g(value)}s"


def _go_g(value: float) -> str:
    """Go's ``%.4g``: Python's, without a trailing exponent difference for our small values."""
    text = f"{value:.4g}"
    return re.sub(r"e([+-])0?(\d\d)", r"e\1\2", text)


def render_annotations(rule: Mapping[str, Any], labels: Mapping[str, str], value: float) -> dict[str, str]:
    """An alert rule's annotations as Prometheus renders them for ``labels`` and ``value``."""
    out = {}
    for key, template in rule.get("annotations", {}).items():
        text = re.sub(r"\{\{ \$value \| humanizeDuration \}\}", lambda _: humanize_duration(value), template)
        text = re.sub(r"\{\{ \$value \| humanize \}\}", lambda _: humanize(value), text)
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        assert "{{" not in text, f"annotation {key} uses a template the test cannot render: {text}"
        out[key] = text
    return out


def render_rules(helm: Path, values: Mapping[str, str]) -> dict[str, Any]:
    """The ``spec`` of the chart's PrometheusRule rendered with ``values`` (a rules file's body)."""
    from tests.helm.conftest import render

    docs = render(helm, dict(values), extra=["--show-only", "templates/prometheusrule.yaml"])
    [doc] = docs
    assert doc["kind"] == "PrometheusRule"
    spec: dict[str, Any] = doc["spec"]
    return spec


def write_rules(path: Path, spec: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(spec), sort_keys=False, width=200))
    return path


def alert_rule(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for g in spec["groups"] for r in g["rules"] if r.get("alert") == name)
    return found
