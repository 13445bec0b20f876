"""Reading an embedded stack's ``/metrics`` (Prometheus text) from a bench. Not a bench on its own."""

from __future__ import annotations

import re

import aiohttp

from broker.embedded.stack import Stack


async def metrics_text(stack: Stack) -> str | None:
    """The dispatcher's ``/metrics`` page, or None if it could not be read."""
    try:
        async with (
            aiohttp.ClientSession(headers=stack.http_headers) as http,
            http.get(f"{stack.http_url}metrics") as r,
        ):
            return await r.text()
    except aiohttp.ClientError:
        return None


def sample(text: str, name: str) -> float | None:
    """The value of the unlabelled series ``name`` (a counter or gauge), None if absent."""
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def labelled_sum(text: str, name: str) -> float | None:
    """The sum over every labelled series of ``name`` (``name{...} value``), None if there is none."""
    values = re.findall(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values) if values else None
