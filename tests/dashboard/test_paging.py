"""The dashboard pages through every kept job (older / newer), in a real headless Chromium
against a live stack. The kept jobs are finished records written straight into KV (as a
dispatcher leaves them), so that 120 of them need no 120 pods."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from broker import contract, store
from broker.embedded.stack import Stack
from tests.dashboard.browser import launch

pytestmark = [pytest.mark.browser, pytest.mark.slow]

KEPT = 120
PAGE = 50  # the dashboard's page size


async def test_the_dashboard_pages_through_every_kept_job(
    stack: Stack, chromium: str, output_dir: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    assert stack.nc is not None
    st = await store.Store.open(stack.nc)
    start = contract.utcnow() - dt.timedelta(hours=1)
    for n in range(KEPT):
        at = start + dt.timedelta(seconds=n)
        record = contract.JobRecord(
            spec=contract.JobSpec(id=f"kept-{n:03}", task="demo.sleep"),
            phase=contract.JobPhase.SUCCEEDED,
            submitted_at=at,
            updated_at=at,
            finished_at=at,
        )
        assert await st.create(record) is not None
    newest_first = [f"kept-{n:03}" for n in reversed(range(KEPT))]

    async with async_playwright() as pw:
        context = await launch(pw, chromium, tmp_path)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(stack.dashboard_url)

            async def shown(first: str, rows: int) -> list[str]:
                await page.wait_for_function(
                    f"document.querySelectorAll('#jobs tr[data-job]').length === {rows} && "
                    f"document.querySelector('#jobs tr[data-job]').dataset.job === '{first}'",
                    timeout=15_000,
                )
                return [
                    await row.get_attribute("data-job") or ""
                    for row in await page.locator("#jobs tr[data-job]").all()
                ]

            seen = await shown(newest_first[0], PAGE)
            assert await page.locator("#jobs-newer").is_disabled()
            assert await page.locator("#jobs-total").inner_text() == f"1-{PAGE} of {KEPT}"
            await page.click("#jobs-older")
            seen += await shown(newest_first[PAGE], PAGE)
            assert await page.locator("#jobs-total").inner_text() == f"{PAGE + 1}-{2 * PAGE} of {KEPT}"
            await page.click("#jobs-older")
            seen += await shown(newest_first[2 * PAGE], KEPT - 2 * PAGE)
            assert await page.locator("#jobs-older").is_disabled()
            await page.screenshot(path=str(output_dir / "dashboard-paging.png"), full_page=True)
            assert seen == newest_first  # every kept job once, newest first

            await page.click("#jobs-newer")
            assert await shown(newest_first[PAGE], PAGE) == newest_first[PAGE : 2 * PAGE]
            await page.click("#jobs-newer")
            assert await shown(newest_first[0], PAGE) == newest_first[:PAGE]
            assert await page.locator("#jobs-newer").is_disabled()
        finally:
            await context.close()
