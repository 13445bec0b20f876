"""One way the dashboard tests start the browser: Debian's Chromium, headless, a fresh profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def launch(pw: Any, chromium: str, tmp_path: Path, *, height: int = 1300, bypass_csp: bool = True,
                 **options: Any) -> Any:
    """A persistent browser context of ``chromium`` (playwright's ``BrowserContext``).
    ``bypass_csp``: the page's CSP forbids eval, which ``wait_for_function`` needs; a test that
    proves the page works under its own policy turns it off."""
    return await pw.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=chromium,
        headless=True,
        args=FLAGS,
        viewport={"width": 1400, "height": height},
        bypass_csp=bypass_csp,
        **options,
    )
