"""The Grafana board in the Helm chart queries only metrics we expose, and all of them (plus
``process_*`` joined to ``jobq_build_info``). tests/metrics/ checks what its queries return."""

from __future__ import annotations

import json
import re
from pathlib import Path

from broker import metrics

BOARD = Path(__file__).resolve().parents[2] / "helm/jobq/dashboards/jobq-grafana.json"


def _exprs(panels: list[dict[str, object]]) -> list[str]:
    found: list[str] = []
    for panel in panels:
        for target in panel.get("targets", []):  # type: ignore[attr-defined]
            found.append(target["expr"])
        found += _exprs(panel.get("panels", []))  # type: ignore[arg-type]
    return found


def test_grafana_board_uses_exactly_our_metrics() -> None:
    board = json.loads(BOARD.read_text())
    exprs = _exprs(board["panels"])
    assert exprs
    used = set()
    for expr in exprs:
        for name in re.findall(r"\b(?:jobq|process)_[a-z_]+", expr):
            if name.startswith("process_"):
                assert "jobq_build_info" in expr, f"{expr!r}: process_* of other targets would mix in"
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in metrics.METRICS, f"{name} in {expr!r} is not a jobq metric"
            used.add(base)
    assert used == set(metrics.METRICS), set(metrics.METRICS) - used
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "queue"}
