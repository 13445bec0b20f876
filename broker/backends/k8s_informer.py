"""A small informer: list, then watch from the list's resourceVersion, keep a cache of raw objects.

Watches ask for bookmarks (so a reconnect resumes from a recent resourceVersion), re-list on
410 Gone, and back off on 429/5xx and on broken connections. ``synced`` is set after the first
successful list. Every change calls ``on_change(kind, old, new)`` (``new`` is None on delete).

As client-go's informers do, objects pass through ``transform`` before they are cached (the
backend drops what it never reads, such as ``managedFields``), and ``indexers`` keep secondary
indexes (name -> function giving an object's index value, or None) so that the cache answers
"the pods of job X" or "the pods on node Y" without scanning every object.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import aiohttp
import structlog

from broker import k8swatch
from broker.k8sapi import ApiError, Obj

log = structlog.get_logger("jobq.backend.kubernetes")

OnChange = Callable[[str, Obj | None, Obj | None], None]
Transform = Callable[[Obj], Obj]
IndexFn = Callable[[Obj], str | None]


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class Informer:
    def __init__(self, kind: str, list_fn: k8swatch.ListFn, on_change: OnChange, *,
                 watch_timeout_s: int = 240, transform: Transform | None = None,
                 indexers: dict[str, IndexFn] | None = None) -> None:
        self.kind = kind
        self._on_change = on_change
        self._transform = transform
        self._indexers = dict(indexers or {})
        self.indexes: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}
        """Index name -> index value -> keys of the cached objects with that value."""
        self._source = k8swatch.ListWatch(
            list_fn, timeout_s=watch_timeout_s,
            request_timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=watch_timeout_s + 30))
        self.items: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.relists = 0

    def by_index(self, name: str, value: str) -> list[Obj]:
        """The cached objects whose index ``name`` has ``value``."""
        keys = self.indexes[name].get(value)
        return [self.items[k] for k in keys] if keys else []

    def _reindex(self, key: str, old: Obj | None, new: Obj | None) -> None:
        for name, index_fn in self._indexers.items():
            before = index_fn(old) if old is not None else None
            after = index_fn(new) if new is not None else None
            if before == after:
                continue
            index = self.indexes[name]
            if before is not None:
                keys = index.get(before)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[before]
            if after is not None:
                index.setdefault(after, set()).add(key)

    def _apply(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        old = self.items.get(key)
        if kind == "DELETED":
            self.items.pop(key, None)
            self._reindex(key, old, None)
            self._on_change(self.kind, old, None)
        else:
            if self._transform is not None:
                obj = self._transform(obj)
            self.items[key] = obj
            self._reindex(key, old, obj)
            self._on_change(self.kind, old, obj)

    def upsert(self, obj: Obj) -> None:
        """Take an object we got from a write (create), unless the cache has a newer one."""
        old = self.items.get(key_of(obj))
        if old is None:
            self._apply("ADDED", obj)

    async def _on_event(self, kind: str, obj: Obj) -> None:
        self._apply(kind, obj)

    async def _relist(self) -> None:
        listing = await self._source.list()
        fresh = {key_of(o): o for o in listing}
        for key in [k for k in self.items if k not in fresh]:
            self._apply("DELETED", self.items[key])
        for obj in fresh.values():
            if self.items.get(key_of(obj), {}).get("metadata", {}).get("resourceVersion") != \
                    obj["metadata"].get("resourceVersion"):
                self._apply("MODIFIED", obj)
        self.relists += 1
        self.synced.set()

    async def run(self) -> None:
        backoff = 0.1
        relist = True
        while True:
            try:
                if relist:
                    await self._relist()
                    relist = False
                await self._source.watch(self._on_event)
                backoff = 0.1
            except ApiError as exc:
                if exc.status == k8swatch.GONE:
                    log.info("watch_expired", kind=self.kind, reason="gone")
                    relist = True
                    continue
                delay = exc.retry_after or backoff
                log.warning("watch_failed", kind=self.kind, status=exc.status, error=exc.message,
                            retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, 5.0)
                if exc.status not in (429,) and exc.status < 500:
                    relist = True
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                log.warning("watch_failed", kind=self.kind, error=repr(exc), retry_in_s=round(backoff, 2))
                await asyncio.sleep(backoff * (1 + random.random() / 2))
                backoff = min(backoff * 2, 5.0)
