"""The dashboard in a real headless Chromium (with the page's own CSP) against a live stack: a
running job's progress bar and message, a finished job's artifacts and their download."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.dashboard.browser import launch
from tests.integration.helpers import wait_running

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_dashboard_shows_progress_and_artifacts(
    stack: Stack, client: JobqClient, chromium: str, output_dir: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    assert stack.nc is not None
    problems: list[str] = []
    trained = await client.submit(task="sklearn.train", args={"dataset": "iris", "model": "knn"})
    sleeper = await client.submit(task="demo.sleep", args={"seconds": 60, "progress_steps": 30})
    await trained.result(timeout=120)
    await wait_running(client, [sleeper.id], count=1)
    async with async_playwright() as pw:
        # no bypass_csp: the progress bar must work under the page's own policy
        context = await launch(pw, chromium, tmp_path, bypass_csp=False, accept_downloads=True)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(stack.dashboard_url)

            # The running job's row shows a bar, a percent and the task's message, and they move
            # (the page looks again every 2 s while jobs run; no event announces progress).
            cell = f"#jobs td[data-progress='{sleeper.id}']"
            await page.wait_for_selector(f"{cell} progress", timeout=20_000)
            first = float(await page.locator(f"{cell} progress").get_attribute("value") or "0")
            text = await page.locator(cell).inner_text()
            assert 0 < first < 1 and "%" in text and "slept " in text, text
            stored = await client.progress(sleeper.id)
            assert stored is not None and stored.fraction >= first
            for _ in range(100):
                later = float(await page.locator(f"{cell} progress").get_attribute("value") or "0")
                if later > first:
                    break
                await asyncio.sleep(0.1)
            assert later > first, "the bar did not move"
            # The detail view shows it too.
            await page.click(f"#jobs tr[data-job='{sleeper.id}']")
            await page.wait_for_selector("#detail-summary .progress progress", timeout=8_000)
            assert "slept " in await page.locator("#detail-summary").inner_text()
            await page.screenshot(path=str(output_dir / "dashboard-progress.png"), full_page=True)

            # A finished job lists its accepted attempt's artifacts; the download is those bytes.
            await page.evaluate(f"location.hash = '#/jobs/{trained.id}'")
            row = "#artifacts tr[data-artifact='model.pkl']"
            await page.wait_for_selector(row, timeout=8_000)
            got = await (await stack.nc.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)).get(
                contract.artifact_key(trained.id, 1, "model.pkl")
            )
            cells = await page.locator(f"{row} td").all_inner_texts()
            assert cells[0] == "model.pkl" and cells[3] == "1", cells
            assert contract.artifact_digest(bytes(got.data or b"")).startswith("sha256:" + cells[2]), cells
            async with page.expect_download() as download_info:
                await page.click(f"{row} button")
            download = await download_info.value
            saved = tmp_path / "downloaded.pkl"
            await download.save_as(saved)
            assert download.suggested_filename == "model.pkl"
            assert saved.read_bytes() == bytes(got.data or b"")
        finally:
            await context.close()
    await client.cancel(sleeper.id)
    assert not problems, problems
