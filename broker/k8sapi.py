"""The raw Kubernetes API call shared by the Kubernetes backend and the simulated kubelet.

A leaf module (aiohttp and the standard library only), so ``workers`` may use it without
depending on the broker's internals. Calls are made with ``_preload_content=False`` so that we
read the JSON ourselves and see every HTTP status, including 409, 410 and 429.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import aiohttp

Obj = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


async def call(request: Awaitable[Any]) -> Obj:
    """Await a kubernetes_asyncio call made with ``_preload_content=False``: JSON body or ApiError."""
    resp: aiohttp.ClientResponse = await request
    async with resp:
        body = await resp.read()
        if not 200 <= resp.status < 300:
            try:
                message = str(json.loads(body).get("message", ""))
            except ValueError:
                message = body[:300].decode(errors="replace")
            retry_after = resp.headers.get("Retry-After")
            raise ApiError(resp.status, message,
                           retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
        data: Obj = json.loads(body) if body else {}
        return data
