"""List, then watch from the list's resourceVersion: what the Kubernetes backend's informer and
the simulated kubelet both do with a collection.

A leaf module (aiohttp and ``k8sapi`` only; the list function is the caller's kubernetes_asyncio
method), so ``workers`` may use it without depending on the broker's internals. What to do after
an error (back off, list again) stays with the caller: after a 410 Gone, list again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from broker.k8sapi import ApiError, Obj, call

ListFn = Callable[..., Awaitable[Any]]
"""A kubernetes_asyncio list method, e.g. ``CoreV1Api.list_pod_for_all_namespaces``."""
OnEvent = Callable[[str, Obj], Awaitable[None]]
"""Called with each event's type (ADDED, MODIFIED, DELETED) and object."""

GONE = 410
"""The resourceVersion to watch from is too old: list again."""


class ListWatch:
    """One collection (``list_fn`` with ``params`` such as a field selector), listed and watched.

    ``list()`` returns the items and remembers the collection's resourceVersion; each
    ``watch(on_event)`` is one watch request from there (bookmarks asked for and followed, so the
    next request resumes from a recent version). An error status, or an ERROR event, raises
    ApiError (``GONE`` among them)."""

    def __init__(self, list_fn: ListFn, *, timeout_s: int,
                 request_timeout: aiohttp.ClientTimeout | None = None, **params: Any) -> None:
        self._list = list_fn
        self._timeout_s = timeout_s
        self._request_timeout = request_timeout
        self._params = params
        self.version: str | None = None
        """The resourceVersion the next watch starts from (None: list first)."""

    async def list(self) -> list[Obj]:
        listing = await call(self._list(**self._params, _preload_content=False))
        self.version = listing["metadata"]["resourceVersion"]
        items: list[Obj] = listing.get("items", [])
        return items

    async def watch(self, on_event: OnEvent) -> None:
        """One watch request, until the server ends it (after ``timeout_s``)."""
        if self.version is None:
            raise ValueError("list the collection before watching it")
        extra = {"_request_timeout": self._request_timeout} if self._request_timeout else {}
        resp: aiohttp.ClientResponse = await self._list(
            **self._params, watch=True, resource_version=self.version, allow_watch_bookmarks=True,
            timeout_seconds=self._timeout_s, _preload_content=False, **extra)
        async with resp:
            if resp.status != 200:
                raise ApiError(resp.status, _message(await resp.read()))
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    raise ApiError(int(obj.get("code", 500)), str(obj.get("message", "")))
                if event["type"] != "BOOKMARK":
                    await on_event(event["type"], obj)
                self.version = obj["metadata"]["resourceVersion"]


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")
