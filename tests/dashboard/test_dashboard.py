"""The dashboard in a real headless Chromium against a live stack: jobs appear, a node dies."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.dashboard.browser import launch
from tests.http.helpers import kill_busiest_node

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JOBS = 8


async def test_dashboard_shows_jobs_and_node_loss(
    stack: Stack, client: JobqClient, chromium: str, output_dir: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    origin = urlsplit(stack.http_url).netloc
    requests: list[str] = []
    problems: list[str] = []
    async with async_playwright() as pw:
        context = await launch(pw, chromium, tmp_path)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            # The stack generated an API token; the link it prints carries it in the fragment.
            assert stack.http_token
            await page.goto(stack.dashboard_url)
            assert await page.evaluate("location.hash") == ""  # taken out of the address bar

            # The nodes report, and the event stream is connected.
            await page.wait_for_function(
                "document.querySelectorAll('#nodes td.status.ready').length === 3", timeout=15_000
            )
            await page.wait_for_function(
                "document.getElementById('live').textContent === 'live'", timeout=10_000
            )

            # Jobs appear live (faster than the 10 s safety-net poll).
            ids = [f"ui-{i}" for i in range(JOBS)]
            for job_id in ids:
                await client.submit({"id": job_id, "task": "demo.sleep", "args": {"seconds": 4}})
            await page.wait_for_function(
                f"document.querySelectorAll('#jobs tr[data-job]').length === {JOBS}", timeout=6_000
            )

            # A busy node is SIGKILLed: the dashboard shows it NotReady.
            node, _ = await kill_busiest_node(stack, client)
            await page.wait_for_selector(f"#nodes tr[data-node='{node}'] td.status.notready", timeout=12_000)

            # Everything recovers; the failure and its recovery time are listed.
            records = await client.wait(ids, timeout=90)
            assert all(r.phase == contract.JobPhase.SUCCEEDED for r in records.values())
            succeeded = "#count-cards [data-state='succeeded'] .n"
            await page.wait_for_function(
                f"document.querySelector(\"{succeeded}\").textContent === '{JOBS}'", timeout=12_000
            )
            await page.wait_for_selector(f"#failures tr[data-failure='{node}']", timeout=12_000)
            failure_cells = await page.locator(f"#failures tr[data-failure='{node}'] td").all_inner_texts()
            moved = [
                r
                for r in records.values()
                if any(a.reason == contract.FailureReason.NODE_LOST for a in r.attempts)
            ]
            assert moved and failure_cells[2] == str(len(moved)), failure_cells
            assert failure_cells[4].endswith("s") and failure_cells[4] != "-", failure_cells
            await page.wait_for_selector("#retry-chart rect[data-reason='node_lost']", timeout=12_000)

            # The job detail view shows the attempt timeline of a job that moved.
            moved_id = moved[0].spec.id
            await page.click(f"#jobs tr[data-job='{moved_id}']")
            await page.wait_for_function(
                "document.querySelectorAll('#attempts tr[data-attempt]').length >= 2", timeout=8_000
            )
            assert await page.locator("#timeline rect[data-attempt]").count() >= 3
            assert "node_lost" in await page.locator("#attempts").inner_text()
            await asyncio.sleep(0.3)
            await page.screenshot(path=str(output_dir / "dashboard.png"), full_page=True)

            # A job that failed: its last output lines are on the attempt, its output on demand.
            failing = {
                "id": "ui-fails",
                "command": ["sh", "-c", "echo line-1; echo line-2; exit 3"],
                "retry": {"max_attempts": 1},
            }
            await client.submit(failing)
            assert (await client.wait(["ui-fails"], timeout=60))["ui-fails"].phase == contract.JobPhase.DEAD
            await page.evaluate("location.hash = '#/jobs/ui-fails'")
            tail = "#attempts tr[data-tail='1'] pre"
            await page.wait_for_selector(tail, timeout=8_000)
            assert await page.locator(tail).inner_text() == "line-1\nline-2"
            await page.click("#attempts button[data-log='1']")
            await page.wait_for_function(
                "document.getElementById('attempt-log-text').textContent === 'line-1\\nline-2\\n'",
                timeout=8_000,
            )
            await page.screenshot(path=str(output_dir / "dashboard-failure.png"), full_page=True)
        finally:
            await context.close()

    assert not [u for u in requests if stack.http_token in u], "the token went into a URL"
    foreign = [u for u in requests if urlsplit(u).netloc != origin and not u.startswith("data:")]
    assert not foreign, f"the dashboard requested other origins: {foreign}"
    assert not problems, problems
