"""`jobq watch`: a live terminal view of queues, nodes, running jobs with their progress, node
failures and dead letters.

It reads the dispatcher's HTTP API (the same numbers as the dashboard and /metrics), so it
works from any machine that can reach the dispatcher, with no NATS credentials.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from submitter import clibase

DEFAULT_URL = "http://127.0.0.1:8222/"
PHASES = ("queued", "running", "succeeded", "dead", "cancelled")
RUNNING_SHOWN = 10
"""Running jobs listed with their progress (the newest first)."""


def resolve_token(base: str, data_dir: Path) -> str:
    """JOBQ_HTTP_TOKEN (or JOBQ_HTTP_TOKEN_FILE), else the running `jobq up`'s token, but only
    for that stack's own address: a token is never sent to another server."""
    if "JOBQ_HTTP_TOKEN" in os.environ or "JOBQ_HTTP_TOKEN_FILE" in os.environ:
        from broker import settings

        return settings.http_token(os.environ)
    from broker.embedded.stack_state import read_state

    state = read_state(data_dir) or {}
    path = state.get("http_token_file")
    if state.get("http_url") != base or not isinstance(path, str):
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def resolve_url(url: str | None, data_dir: Path) -> str:
    """--url, else JOBQ_HTTP_URL, else the running embedded stack's address, else the default."""
    if url is None:
        url = os.environ.get("JOBQ_HTTP_URL")
    if url is None:
        from broker.embedded.stack_state import read_state

        state = read_state(data_dir)
        found = state.get("http_url") if state else None
        url = found if isinstance(found, str) else DEFAULT_URL
    return url if url.endswith("/") else url + "/"


async def snapshot(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async def get(path: str) -> Any:
        async with http.get(base + path, timeout=aiohttp.ClientTimeout(total=5)) as response:
            if response.status == 401:
                raise click.ClickException(
                    f"{base} needs its API token: set JOBQ_HTTP_TOKEN or JOBQ_HTTP_TOKEN_FILE "
                    "(`jobq up` keeps it in <data dir>/http-token)"
                )
            return await response.json()

    ready, queues, nodes, letters, running = await asyncio.gather(
        get("readyz"),
        get("api/queues"),
        get("api/nodes"),
        get("api/dead-letters?limit=5"),
        get(f"api/jobs?state=running&limit={RUNNING_SHOWN}"),
    )
    return {"ready": ready, "queues": queues, "nodes": nodes, "letters": letters, "running": running}


def progress_cell(progress: dict[str, Any] | None, *, width: int = 20) -> Text:
    """A job's progress as a bar, percent and message ("-" before its first report)."""
    if not progress:
        return Text("-")
    fraction = float(progress["fraction"])
    done = round(fraction * width)
    return Text.assemble(
        ("█" * done, "cyan"),
        ("░" * (width - done), "dim"),
        f" {fraction:4.0%} ",
        str(progress.get("message", ""))[:60],
    )


def render(snap: dict[str, Any], *, base: str) -> Group:
    ready, queues, nodes, letters = snap["ready"], snap["queues"], snap["nodes"], snap["letters"]
    totals = queues["totals"]
    header = Text.assemble(
        ("jobq ", "bold"),
        (base, "cyan"),
        "  ",
        ("leader" if ready.get("leader") else "standby", "green" if ready.get("leader") else "yellow"),
        "  ",
        (
            "NATS up" if ready.get("nats_connected") else "NATS DOWN",
            "green" if ready.get("nats_connected") else "bold red",
        ),
        "  ",
        "  ".join(f"{p} {totals.get(p, 0)}" for p in PHASES),
        "  ",
        (f"dead letters {queues.get('dead_letters', 0)}", "red" if queues.get("dead_letters") else ""),
    )

    qt = Table(title="Queues", expand=True)
    for column in ("queue", "depth", "pending", *PHASES, "retries"):
        qt.add_column(column, justify="left" if column in ("queue", "retries") else "right")
    for q in queues["queues"]:
        retries = ", ".join(f"{k}={v}" for k, v in q["retries"].items()) or "-"
        qt.add_row(
            q["queue"],
            str(q["depth"]),
            str(q["pending"]),
            *(str(q["jobs"].get(p, 0)) for p in PHASES),
            retries,
        )

    nt = Table(title="Nodes", expand=True)
    for column in ("node", "status", "pods", "running", "cpu"):
        nt.add_column(column)
    for n in nodes["nodes"]:
        status = Text("Ready", "green") if n["ready"] else Text("NotReady", "bold red")
        nt.add_row(
            n["name"],
            status,
            str(n["pods"]),
            str(n["running_attempts"]),
            f"{n['allocated_cpu']:g}/{n['capacity']['cpu']:g}",
        )

    parts: list[Any] = [header, qt, nt]
    running = snap.get("running") or {"jobs": [], "total": 0}
    if running["jobs"]:
        rt = Table(title=f"Running jobs ({len(running['jobs'])} of {running['total']})", expand=True)
        for column in ("job", "queue", "task", "node", "attempt", "progress"):
            rt.add_column(column)
        for job in running["jobs"]:
            rt.add_row(
                job["id"],
                job["queue"],
                job["task"],
                job["node"] or "-",
                str(job["attempts"]),
                progress_cell(job.get("progress")),
            )
        parts.append(rt)
    if nodes["failures"]:
        ft = Table(title="Recent node failures", expand=True)
        for column in ("node", "detected", "jobs moved", "recovered", "recovery p50 s", "max s"):
            ft.add_column(column)
        for f in nodes["failures"][:5]:
            rec = f["recovery_seconds"]
            ft.add_row(
                f["node"],
                (f["detected_at"] or "")[11:19],
                str(f["affected_jobs"]),
                str(f["recovered_jobs"]),
                str(rec["p50"] if rec["p50"] is not None else "-"),
                str(rec["max"] if rec["max"] is not None else "-"),
            )
        parts.append(ft)
    series = queues.get("retry_timeline", {}).get("series", {})
    if series:
        window = int(len(next(iter(series.values()))) * queues["retry_timeline"]["bucket_seconds"])
        parts.append(
            Text(
                f"retries in the last {window}s: "
                + ", ".join(f"{k}={sum(v)}" for k, v in sorted(series.items()))
            )
        )
    if letters["dead_letters"]:
        dt = Table(title=f"Dead letters ({letters['total']})", expand=True)
        for column in ("job", "reason", "message"):
            dt.add_column(column)
        for letter in letters["dead_letters"]:
            dt.add_row(letter["job_id"] or "-", letter["reason"], letter["message"][:80])
        parts.append(dt)
    return Group(*parts)


async def watch(base: str, *, interval_s: float, once: bool, console: Console, token: str = "") -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        if once:
            console.print(render(await snapshot(http, base), base=base))
            return
        with Live(
            Text(f"connecting to {base} ..."), console=console, refresh_per_second=4, screen=False
        ) as live:
            while True:
                try:
                    live.update(render(await snapshot(http, base), base=base))
                except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                    live.update(Text(f"{base}: {exc!r} (retrying)", "bold red"))
                await asyncio.sleep(interval_s)


def register(cli: click.Group) -> None:
    @cli.command("watch")
    @click.option(
        "--url",
        default=None,
        metavar="URL",
        help=f"Dispatcher HTTP address (default: JOBQ_HTTP_URL, the running `jobq up`, or {DEFAULT_URL}).",
    )
    @click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=Path(".jobq"),
        show_default=True,
        help="Where `jobq up` keeps stack.json.",
    )
    @click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
    @click.option("--once", is_flag=True, help="Print one snapshot and exit.")
    def watch_cmd(url: str | None, data_dir: Path, interval: float, once: bool) -> None:
        """Live view of queues, retries, nodes, running jobs with their progress, node failures
        and dead letters (Ctrl-C ends)."""
        base = resolve_url(url, data_dir)
        token = resolve_token(base, data_dir)
        try:
            clibase.run(watch(base, interval_s=interval, once=once, console=Console(), token=token))
        except (aiohttp.ClientError, TimeoutError) as exc:  # one line, exit 4 (submitter/clibase.py)
            raise ConnectionError(
                f"cannot read {base}: {str(exc) or type(exc).__name__}. Is the dispatcher running "
                "(jobq up), or is --url right?"
            ) from None
