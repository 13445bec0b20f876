"""A started embedded stack is whole: every dispatcher answers /readyz 200 and one is the synced leader.

A standby answers /readyz 200 at once, so a stack that waited only for its first dispatcher's 200
could hand a caller an API whose leader has not yet synced (its /readyz then says 503). Read back
from each dispatcher's own probe the moment ``start`` returns, with two dispatchers racing for the
lease, over several starts.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import running_stack

pytestmark = pytest.mark.slow


async def _probe(http: aiohttp.ClientSession, scheme: str, port: int) -> tuple[int, dict[str, object]]:
    async with http.get(f"{scheme}://127.0.0.1:{port}/readyz", ssl=False) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("round_", range(3))
async def test_start_returns_once_a_synced_leader_serves(tmp_path: Path, round_: int) -> None:
    async with running_stack(tmp_path, dispatchers=2, nodes=1) as stack, aiohttp.ClientSession() as http:
        scheme = stack.http_url.split("://", 1)[0]
        probes = [await _probe(http, scheme, port) for port in stack.http_ports.values()]
    assert [status for status, _ in probes] == [200, 200], probes
    leaders = [body for _, body in probes if body["leader"]]
    assert len(leaders) == 1 and leaders[0]["synced"] is True, probes
