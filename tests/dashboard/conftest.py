"""Headless Debian Chromium for the dashboard tests (installed by tests/tools/ensure_chromium.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("JOBQ_CHROMIUM", "/usr/bin/chromium")
OUTPUT = ROOT / "test-output"


def _unavailable(why: str) -> None:
    """A missing browser fails in CI and skips locally."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def chromium() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "tests/tools/ensure_chromium.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not os.access(CHROMIUM, os.X_OK):
        _unavailable(result.stderr.strip() or f"no Chromium at {CHROMIUM}")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _unavailable(
            "the playwright package is not installed (pip install playwright; "
            "no `playwright install` needed, the tests use Debian's chromium)"
        )
    return CHROMIUM


@pytest.fixture
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
