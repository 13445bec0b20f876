"""When the embedded stack's dispatchers are ready to be used: each answers ``/readyz`` and one leads.

A standby answers ``/readyz`` 200 at once (it has nothing to sync), so one dispatcher's 200 alone
would let a caller in before anyone leads; until the leader's backend has synced, its own
``/readyz`` is 503 and the API of the stack is not yet whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp


async def dispatchers_ready(http: aiohttp.ClientSession, base_url: str, ports: Iterable[int]) -> bool:
    """Every dispatcher answers ``/readyz`` 200 and one of them says it is the synced leader."""
    scheme = base_url.split("://", 1)[0]
    bodies = [await _readyz(http, f"{scheme}://127.0.0.1:{port}/readyz") for port in ports]
    return bool(bodies) and all(b is not None for b in bodies) and any(
        b is not None and b.get("leader") is True and b.get("synced") is True for b in bodies
    )


async def _readyz(http: aiohttp.ClientSession, url: str) -> dict[str, object] | None:
    try:  # a probe of the stack's own child on 127.0.0.1, hence no certificate check
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=1), ssl=False) as response:
            body = await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) else None
