"""The dashboard in a real headless Chromium, under the page's own CSP, against a live stack: a job's
detail shows each attempt's checkpoint (step, what it resumed from) and work lost, and a running
job's live checkpoint, which follows the job's pointer as it moves. Records and pointers are planted
in NATS as the dispatcher and a pod would write them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.dashboard.browser import launch
from tests.integration.checkpoint_plants import AT, disrupted_job, plant_pointer, pointer, put_record
from tests.integration.helpers import wait_running

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def text_becomes(page: Any, selector: str, want: str, *, timeout: float = 15.0) -> None:
    """Wait until ``selector``'s text is ``want`` (no wait_for_function: the CSP forbids eval)."""
    seen = None
    for _ in range(int(timeout / 0.1)):
        if await page.locator(selector).count():
            seen = await page.locator(selector).inner_text()
            if seen == want:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{selector}: {seen!r}, not {want!r}")


async def test_dashboard_shows_checkpoints_work_lost_and_the_live_checkpoint(
    stack: Stack, client: JobqClient, chromium: str, output_dir: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    assert stack.nc is not None
    problems: list[str] = []
    sleeper = await client.submit(task="demo.sleep", args={"seconds": 120})
    await put_record(stack.nc, disrupted_job("planted"))
    await wait_running(client, [sleeper.id], count=1)
    await plant_pointer(stack.nc, sleeper.id, pointer(sleeper.id, 1, resumed_step=None))
    async with async_playwright() as pw:
        context = await launch(pw, chromium, tmp_path, bypass_csp=False)  # the page's own policy
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(stack.dashboard_url)
            at = await page.evaluate(f"new Date('{AT.isoformat()}').toLocaleTimeString()")

            # An ended job: per attempt the checkpoint and the work lost, the sum in the summary.
            await page.evaluate("location.hash = '#/jobs/planted'")
            await text_becomes(page, "#attempts td[data-checkpoint='1']", f"step 4 at {at}")
            await text_becomes(page, "#attempts td[data-checkpoint='2']",
                               f"step 9 at {at} (resumed from step 4 of attempt 1)")
            lost = await page.locator("#attempts td[data-work-lost]").all_inner_texts()
            assert lost == ["2.1 s", "0.5 s"], lost
            assert await page.locator("#detail-summary [data-work-lost-total]").inner_text() == "2.6 s"
            assert await page.locator("#detail-summary [data-live-checkpoint]").inner_text() == "-"  # ended
            headers = await page.locator("#attempts thead th").all_inner_texts()
            assert headers[6:9] == ["ran", "checkpoint", "work lost"], headers

            # The running job: its live checkpoint, which follows the pointer (the page looks
            # again every 2 s while jobs run), and goes when the pointer is not its attempt's.
            await page.evaluate(f"location.hash = '#/jobs/{sleeper.id}'")
            live = "#detail-summary [data-live-checkpoint='1']"
            await text_becomes(page, live, f"step 7 at {at}")
            assert await page.locator("#attempts td[data-checkpoint='1']").inner_text() == "-"  # not ended
            assert await page.locator("#detail-summary [data-work-lost-total]").inner_text() == "-"
            await plant_pointer(stack.nc, sleeper.id, pointer(sleeper.id, 1, seq=4, step=8, resumed_step=2))
            await text_becomes(page, live, f"step 8 at {at} (resumed from step 2)")
            await page.screenshot(path=str(output_dir / "dashboard-checkpoints.png"), full_page=True)
            await plant_pointer(stack.nc, sleeper.id, pointer(sleeper.id, 2))  # a newer attempt's: not shown
            await text_becomes(page, "#detail-summary [data-live-checkpoint]", "-")
        finally:
            await context.close()
    await client.cancel(sleeper.id)
    assert not problems, problems
