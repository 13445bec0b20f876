"""The dashboard in a real headless Chromium against a dispatcher that requires a token: it asks
for the token, says clearly when one is wrong, and shows live data once the right one is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.embedded.stack import Stack
from tests.conftest import running_stack, submitter_client
from tests.dashboard.browser import launch

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TOKEN = "dash-token-93b2f0"


async def test_dashboard_asks_for_the_token(chromium: str, output_dir: Path, tmp_path: Path) -> None:
    from playwright.async_api import Request, async_playwright

    api_calls: list[Request] = []
    problems: list[str] = []
    stack: Stack
    async with (
        running_stack(tmp_path, nodes=0, env={"JOBQ_HTTP_TOKEN": TOKEN}) as stack,
        submitter_client(stack) as client,
        async_playwright() as pw,
    ):
        context = await launch(pw, chromium, tmp_path, height=900)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("request", lambda r: api_calls.append(r) if "/api/" in r.url else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(stack.http_url)  # no token in the fragment

            # It asks; nothing is shown meanwhile.
            await page.wait_for_selector("#auth:not([hidden])", timeout=10_000)
            assert "requires its API token" in await page.locator("#token-msg").inner_text()
            assert await page.locator("#live").inner_text() == "locked"
            assert await page.locator("#count-cards .card").count() == 0

            # A wrong token: a clear message, and still no data.
            await page.fill("#token-input", "not-the-token")
            await page.click("#token-form button[type=submit]")
            await page.wait_for_function(
                "document.getElementById('token-msg').textContent.includes('refused')", timeout=10_000
            )
            assert await page.locator("#auth").is_visible()
            assert "not this dispatcher's API token" in await page.locator("#token-msg").inner_text()
            assert await page.locator("#count-cards .card").count() == 0
            await page.screenshot(path=str(output_dir / "dashboard-token-refused.png"))

            # The right one: the form goes, data and the live stream come.
            await page.fill("#token-input", TOKEN)
            await page.click("#token-form button[type=submit]")
            await page.wait_for_selector("#auth", state="hidden", timeout=10_000)
            await page.wait_for_selector("#count-cards [data-state='queued']", timeout=15_000)
            assert await page.locator("#leader").inner_text() == "leader"
            await page.wait_for_function(
                "document.getElementById('live').textContent === 'live'", timeout=10_000
            )
            await client.submit(
                {"id": "tok-1", "task": "demo.sleep", "args": {"seconds": 0.1}}
            )  # no nodes: stays queued
            await page.wait_for_selector("#jobs tr[data-job='tok-1']", timeout=6_000)  # via the stream
            await page.screenshot(path=str(output_dir / "dashboard-token-accepted.png"))
            assert await page.evaluate("sessionStorage.getItem('jobq-token')") == TOKEN
        finally:
            await context.close()

    assert not problems, problems
    assert not [r.url for r in api_calls if TOKEN in r.url or "not-the-token" in r.url]
    sent = {r.headers.get("authorization") for r in api_calls}
    assert f"Bearer {TOKEN}" in sent and "Bearer not-the-token" in sent
    streams = [r for r in api_calls if r.url.endswith("/api/events")]
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in streams)
