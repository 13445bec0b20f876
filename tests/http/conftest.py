"""A stack whose dispatcher requires a bearer token (every route but the probes and the page)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.embedded.stack import Stack
from tests.conftest import running_stack

TOKEN = "test-token-7f3a"


@pytest.fixture
async def token_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, env={"JOBQ_HTTP_TOKEN": TOKEN}) as s:
        yield s
