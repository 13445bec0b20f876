"""Leader lease on a NATS KV key with a TTL: one active dispatcher, the others on standby.

The leader renews the key every ``ttl/4`` with compare-and-set; a standby tries to create it
every ``ttl/4``. When the leader dies its key expires after at most ``ttl`` and a standby takes
over. Split brain is harmless beyond wasted work: every job write is compare-and-set too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

log = structlog.get_logger("jobq.lease")

LEASE_KEY = "dispatcher"


class LeaseLost(Exception):
    """We could not renew the lease in time; stop acting as leader."""


class Lease:
    def __init__(self, kv: KeyValue, *, ttl_s: float, identity: str | None = None) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self._revision: int | None = None

    @property
    def is_leader(self) -> bool:
        return self._revision is not None

    async def holder(self) -> str | None:
        try:
            entry = await self._kv.get(LEASE_KEY)
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until we hold the lease (True) or ``stop`` is set (False)."""
        waited = False
        while not stop.is_set():
            try:
                self._revision = await self._kv.create(LEASE_KEY, self.identity.encode())
                log.info("lease_acquired", holder=self.identity, waited=waited)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                if not waited:
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        log.info("lease_standby", holder=await self.holder())
                waited = True
            except (nats.errors.Error, TimeoutError) as exc:
                # A JetStream leader election or a reconnect: keep trying, never give up.
                log.warning("lease_unavailable", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._ttl_s / 4)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until ``stop``; raise LeaseLost if a renewal fails for longer than the TTL."""
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._ttl_s / 4)
            if stop.is_set():
                break
            try:
                assert self._revision is not None
                self._revision = await self._kv.update(LEASE_KEY, self.identity.encode(), last=self._revision)
                last_ok = loop.time()
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                self._revision = None
                raise LeaseLost("another dispatcher holds the lease") from exc
            except (nats.errors.Error, TimeoutError) as exc:
                if loop.time() - last_ok > self._ttl_s * 0.75:
                    self._revision = None
                    raise LeaseLost(f"lease not renewed for {self._ttl_s * 0.75:.1f}s") from exc
                log.warning("lease_renew_failed", error=repr(exc))

    async def release(self) -> None:
        if self._revision is None:
            return
        with contextlib.suppress(Exception):
            await self._kv.delete(LEASE_KEY, last=self._revision)
        self._revision = None
        log.info("lease_released", holder=self.identity)
