"""A self-contained HTML report of one chaos run: the verdict, what was disrupted and when, the
exactly-once checker's findings, each affected job's attempts on a timeline, recovery times and
retries by reason.

Input: Chaos Toolkit's journal plus the snapshot the runner takes of what the system recorded
(job records and events of the burst, the run's disruptions, the checker's last judgement, see
``chaos.probes.exactly_once_defects``); without a snapshot the report is built from the journal
alone.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #dde}
.verdict{display:inline-block;padding:.3rem .8rem;border-radius:4px;font-weight:700;color:#fff}
.pass{background:#1f8a4c}.fail{background:#c0392b}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
td,th{border-bottom:1px solid #eee;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f7fa} code{font-size:12px} .muted{color:#667}
.ok{color:#1f8a4c;font-weight:600}.bad{color:#c0392b;font-weight:600}
.track{position:relative;height:18px;background:#f3f4f8;border-radius:3px;min-width:420px}
.bar{position:absolute;top:2px;height:14px;border-radius:2px;font-size:10px;color:#fff;overflow:hidden;
     white-space:nowrap;padding-left:2px}
.succeeded{background:#1f8a4c}.failed{background:#c0392b}.running,.pending,.creating{background:#8a8fa3}
.mark{position:absolute;top:-3px;bottom:-3px;width:2px;background:#e67e22}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _short(value: object, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _disruptions(journal: Mapping[str, Any], snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    if snapshot.get("disruptions"):
        return list(snapshot["disruptions"])
    found: list[dict[str, Any]] = []
    for run in journal.get("run") or []:
        output = run.get("output")
        if isinstance(output, dict):
            for item in output.get("killed") or []:
                if isinstance(item, dict) and "kind" in item:
                    found.append(item)
    return found


def _affected(jobs: Mapping[str, Any], disruptions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Jobs that lost an attempt, or had one running on a disrupted target."""
    hit = {pod.rpartition("#")[0] for d in disruptions for pod in d.get("pods", [])}
    found = []
    for job_id, job in sorted(jobs.items()):
        record = job.get("record") or {}
        if job_id in hit or len(record.get("attempts", [])) > 1:
            found.append(job_id)
    return found


def _timeline(
    jobs: Mapping[str, Any], affected: Sequence[str], disruptions: Sequence[Mapping[str, Any]]
) -> str:
    spans: list[tuple[str, dict[str, Any]]] = [
        (job_id, a) for job_id in affected for a in (jobs[job_id].get("record") or {}).get("attempts", [])
    ]
    times = [t for _, a in spans for t in (_time(a.get("created_at")), _time(a.get("finished_at"))) if t]
    times += [t for d in disruptions for t in (_time(d.get("at")), _time(d.get("healed_at"))) if t]
    if not times:
        return "<p class='muted'>No job was affected.</p>"
    t0, t1 = min(times), max(times)
    total = max((t1 - t0).total_seconds(), 0.001)

    def pct(t: dt.datetime) -> float:
        return round(100 * (t - t0).total_seconds() / total, 2)

    marks = "".join(
        f"<div class='mark' title='{_e(d['kind'])} {_e(d['target'])}' style='left:{pct(t)}%'></div>"
        for d in disruptions
        if (t := _time(d.get("at")))
    )
    rows = []
    for job_id in affected:
        record = jobs[job_id].get("record") or {}
        bars, cells = [], []
        for a in record.get("attempts", []):
            start = _time(a.get("started_at")) or _time(a.get("created_at")) or t0
            end = _time(a.get("finished_at")) or t1
            state = a.get("state", "")
            label = f"#{a['number']} {a.get('node') or '?'}"
            bars.append(
                f"<div class='bar {_e(state)}' title='{_e(label)} {_e(state)} {_e(a.get('reason') or '')}' "
                f"style='left:{pct(start)}%;width:{max(pct(end) - pct(start), 0.8)}%'>{_e(label)}</div>"
            )
            offset = f"+{(start - t0).total_seconds():.1f}s"
            cells.append(
                f"#{a['number']} on <b>{_e(a.get('node') or '?')}</b> {_e(state)}"
                f"{' (' + _e(a['reason']) + ')' if a.get('reason') else ''} <span class='muted'>"
                f"{offset}</span>"
            )
        stale = sum(1 for e in jobs[job_id].get("events", []) if e.get("type") == "stale")
        rows.append(
            f"<tr><td><code>{_e(job_id)}</code><br><span class='muted'>{_e(record.get('phase'))}"
            f"{f', {stale} stale' if stale else ''}</span></td><td>{'<br>'.join(cells)}</td>"
            f"<td><div class='track'>{marks}{''.join(bars)}</div></td></tr>"
        )
    return (
        f"<p class='muted'>Time 0 = {_e(t0.isoformat())}; span {total:.1f}s. Orange lines: disruptions.</p>"
        "<table><tr><th>job</th><th>attempts</th><th>timeline</th></tr>" + "".join(rows) + "</table>"
    )


def _ssh_table(ssh: Mapping[str, Any] | None) -> str:
    if not ssh:
        return "<p class='bad'>not run</p>"
    rows = "".join(
        f"<tr><td>{_e(p['activity']['name'])}</td><td><code>{_e(_short(p.get('output')))}</code></td>"
        f"<td class='{'ok' if p.get('tolerance_met') else 'bad'}'>"
        f"{'met' if p.get('tolerance_met') else 'NOT met'}</td></tr>"
        for p in ssh.get("probes", [])
    )
    return f"<table><tr><th>probe</th><th>value</th><th>tolerance</th></tr>{rows}</table>"


FINDINGS = (
    ("lost", "lost", "acked, but not succeeded"),
    ("duplicated", "duplicated", "more than one accepted result"),
    ("unproven", "unproven", "accepted without a ledger line of that attempt's pod and token"),
    ("stale_visible", "stale to readers", "readers get another token than the accepted attempt's"),
)


def _exactly_once(check: Mapping[str, Any] | None) -> str:
    """The independent checker's last judgement (figures, flagged jobs and why)."""
    head = "<h2>Exactly once (independent checker)</h2>"
    if not check:
        return head + "<p class='muted'>The checker did not judge this run.</p>"
    summary: Mapping[str, Any] = check.get("summary", {})
    flagged: Mapping[str, Sequence[str]] = check.get("flagged", {})
    rows = []
    for key, label, what in FINDINGS:
        value = summary.get(key, "?")
        which = ", ".join(flagged.get(key, [])[:20]) or "-"
        rows.append(
            f"<tr><td>{_e(label)}</td><td class='{'bad' if value else 'ok'}'>{_e(value)}</td>"
            f"<td class='muted'>{_e(what)}</td><td>{_e(which)}</td></tr>"
        )
    cells = "".join(rows)
    why = "".join(
        f"<li><code>{_e(job_id)}</code>: {_e('; '.join(reasons))}</li>"
        for job_id, reasons in (check.get("details") or {}).items()
    )
    return (
        head
        + f"<p>jobs acked <b>{_e(summary.get('jobs', '?'))}</b>, "
        f"defects <b>{_e(summary.get('defects', '?'))}</b>; "
        f"attempts that ran <b>{_e(summary.get('ran', '?'))}</b> (re-runs {_e(summary.get('reruns', '?'))}), "
        f"stale writes <b>{_e(summary.get('stale_writes', '?'))}</b> (superseded attempts that finished and "
        f"wrote anyway); judged {_e(check.get('at', ''))}</p>"
        "<table><tr><th>finding</th><th>jobs</th><th>meaning</th><th>which</th></tr>" + cells + "</table>"
        + (f"<ul>{why}</ul>" if why else "")
        + "<p class='muted'>Evidence the dispatcher does not produce: publish acks, the ledger the "
        "demo.witness attempts write, result keys, artifacts and results as readers get them, job "
        "records and events (tests/checker.py).</p>"
    )


def render(
    journal: Mapping[str, Any], snapshot: Mapping[str, Any] | None = None, *, problems: Sequence[str] = ()
) -> str:
    snapshot = snapshot or {}
    experiment = journal.get("experiment", {})
    jobs: Mapping[str, Any] = snapshot.get("jobs", {})
    disruptions = _disruptions(journal, snapshot)
    recoveries = {(r["kind"], r["target"], r["at"]): r for r in snapshot.get("recoveries", [])}
    passed = not problems and journal.get("status") == "completed" and not journal.get("deviated")
    verdict = "PASSED" if passed else ("DEVIATED" if journal.get("deviated") else "FAILED")
    affected = _affected(jobs, disruptions)

    records = [j["record"] for j in jobs.values() if j.get("record")]
    phases = Counter(r.get("phase") for r in records)
    retries: Counter[str] = Counter()
    for r in records:
        retries.update(r.get("retries", {}))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>jobq chaos: {_e(experiment.get('title', ''))}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(experiment.get('title', 'chaos experiment'))}</h1>",
        f"<p class='muted'>{_e(experiment.get('description', ''))}</p>",
        f"<p><span class='verdict {'pass' if passed else 'fail'}'>{verdict}</span> "
        f"status <b>{_e(journal.get('status'))}</b>, deviated <b>{_e(journal.get('deviated'))}</b>, "
        f"run <code>{_e(snapshot.get('run_id', '?'))}</code>, {_e(journal.get('start'))} → "
        f"{_e(journal.get('end'))} ({float(journal.get('duration') or 0):.1f}s)</p>",
    ]
    if problems:
        parts.append("<ul>" + "".join(f"<li class='bad'>{_e(p)}</li>" for p in problems) + "</ul>")
    parts.append(
        f"<h2>Jobs</h2><p>submitted <b>{len(jobs)}</b>, succeeded <b>{phases.get('succeeded', 0)}</b>, "
        f"dead {phases.get('dead', 0)}; retries by reason: "
        + (", ".join(f"<b>{_e(k)}</b> {v}" for k, v in sorted(retries.items())) or "none")
        + "</p>"
    )
    parts.append(_exactly_once(snapshot.get("exactly_once")))

    parts.append("<h2>Disruptions and recovery</h2>")
    if disruptions:
        rows = []
        for d in disruptions:
            rec = recoveries.get((d["kind"], d["target"], d["at"]), {})
            extra = [
                f"{k.replace('_', ' ')} {d[k]}"
                for k in ("healed_at", "recovered_at", "restarted_at", "new_holder", "work_lost_s")
                if d.get(k)
            ]
            rows.append(
                f"<tr><td>{_e(d['kind'])}</td><td><b>{_e(d['target'])}</b> (pid {_e(d.get('pid'))}, "
                f"{_e(d.get('signal', ''))})</td><td>{_e(d['at'])}</td>"
                f"<td>{_e(rec.get('seconds', '?'))}s</td><td>{_e(rec.get('affected_jobs', '-'))}</td>"
                f"<td>{_e(', '.join(d.get('pods', [])) or '-')}</td>"
                f"<td class='muted'>{_e('; '.join(extra))}</td></tr>"
            )
        parts.append(
            "<table><tr><th>what</th><th>target</th><th>at</th><th>recovery</th><th>jobs moved</th>"
            "<th>attempts running there</th><th>after</th></tr>" + "".join(rows) + "</table>"
        )
        parts.append(
            "<p class='muted'>Recovery: node kills and partitions, from the disruption to the last "
            "affected job's replacement attempt running; dispatcher kill, to another dispatcher "
            "holding the leader lease; broker kill, to every jobq stream having a leader again.</p>"
        )
    else:
        parts.append("<p class='muted'>No disruption was recorded.</p>")

    parts.append(f"<h2>Affected jobs ({len(affected)})</h2>")
    parts.append(
        _timeline(jobs, affected, disruptions)
        if jobs
        else "<p class='muted'>No snapshot of the job records was taken.</p>"
    )

    steady = journal.get("steady_states") or {}
    parts.append("<h2>Steady state before the method</h2>" + _ssh_table(steady.get("before")))
    parts.append("<h2>Steady state after the method</h2>" + _ssh_table(steady.get("after")))
    rows = []
    for section in ("run", "rollbacks"):
        for r in journal.get(section) or []:
            ok = r.get("status") == "succeeded"
            rows.append(
                f"<tr><td>{section}</td><td>{_e(r['activity'].get('type'))} {_e(r['activity']['name'])}"
                f"</td><td class='{'ok' if ok else 'bad'}'>{_e(r.get('status'))}</td>"
                f"<td>{float(r.get('duration') or 0):.1f}s</td><td><code>"
                f"{_e(_short(r.get('output') if ok else (r.get('exception') or [''])[-1]))}</code></td></tr>"
            )
    parts.append(
        "<h2>Method and rollbacks</h2><table><tr><th></th><th>activity</th><th>status</th>"
        "<th>took</th><th>output</th></tr>" + "".join(rows) + "</table>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
