"""Leader lease on a NATS KV key with a TTL: one active dispatcher, the others on standby.

The timeline (docs/design/dispatcher.md, "Leadership and fencing", has it with figures):

- A standby tries to *create* the key every ``ttl/10``; creation succeeds only once the key is
  gone (deleted by a leader stepping down gracefully, or expired ``ttl`` after its last write).
  The revision that create returns is the new leader's **epoch**: KV revisions are stream
  sequence numbers, so every later leader's epoch is higher (a fencing token).
- The leader renews (compare-and-set on its last revision) every ``ttl/5``; each renewal request
  is cut off after ``ttl/5`` (``asyncio.wait_for``), never the JetStream client's 10 s.
- The leader's authority lasts until ``send time of its last successful renewal + ttl/2``
  (``valid()``). The server stores a renewal after we sent it and expires the key no earlier than
  ``ttl`` after storing it, so a standby can create the key no earlier than ``ttl`` after that
  send time: authority ends ``ttl/2`` before anyone else can have it.
- Every side effect checks ``check()`` right before it acts; a leader that finds itself invalid
  (it could not renew in time, or it was paused) steps down at once (``LeaseLost``), goes back to
  standby and lets the key expire (deleting it would give up the ``ttl/2`` margin).

The clock is CLOCK_BOOTTIME where there is one (it counts while the process is stopped, like
CLOCK_MONOTONIC, and also while the machine is suspended), else ``time.monotonic``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from broker import contract

log = structlog.get_logger("jobq.lease")

LEASE_KEY = contract.LEADER_LEASE_KEY

RENEW_FRACTION = 0.2
"""Renew every ``ttl * RENEW_FRACTION`` seconds."""
REQUEST_FRACTION = 0.2
"""Cut each renewal request off after ``ttl * REQUEST_FRACTION`` seconds."""
VALIDITY_FRACTION = 0.5
"""The leader may act until ``ttl * VALIDITY_FRACTION`` after sending its last successful renewal."""
ACQUIRE_FRACTION = 0.1
"""A standby tries to create the key every ``ttl * ACQUIRE_FRACTION`` seconds."""
RETRY_PAUSE_S = 0.1
"""Pause before retrying a renewal that failed (while still valid)."""


def _default_clock() -> Callable[[], float]:
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            time.clock_gettime(boottime)
        except OSError:
            return time.monotonic
        return lambda: time.clock_gettime(boottime)
    return time.monotonic


class LeaseLost(Exception):
    """We may no longer act as leader (validity ran out, superseded, or renewal refused)."""


class Lease:
    def __init__(self, kv: KeyValue, *, ttl_s: float, identity: str | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._kv = kv
        self.ttl_s = ttl_s
        self.renew_every_s = ttl_s * RENEW_FRACTION
        self.request_timeout_s = ttl_s * REQUEST_FRACTION
        self.validity_s = ttl_s * VALIDITY_FRACTION
        self.acquire_every_s = ttl_s * ACQUIRE_FRACTION
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self._clock = clock or _default_clock()
        self._revision: int | None = None
        self.epoch: int | None = None
        """The KV revision our key was created with while we lead (None on standby)."""
        self._renewed_at = 0.0
        """Clock reading when we sent the last renewal (or the create) that succeeded."""
        self._valid_until = 0.0
        self._lost = asyncio.Event()
        self._lost_reason = ""

    @property
    def is_leader(self) -> bool:
        return self._revision is not None

    def valid(self) -> bool:
        """We lead and may act now: within ``validity_s`` of our last successful renewal's send."""
        return self._revision is not None and not self._lost.is_set() and self._clock() < self._valid_until

    @property
    def renewed_at(self) -> float:
        """Clock reading when we sent the create or renewal that last succeeded."""
        return self._renewed_at

    def remaining(self) -> float:
        """Seconds of authority left (negative: overdue)."""
        return self._valid_until - self._clock()

    def check(self, seen_epoch: int = 0) -> int:
        """Our epoch if we may act now. Otherwise step down and raise LeaseLost: when our validity
        ran out, or when ``seen_epoch`` (the epoch stored on something we are about to change) is
        higher than ours, which means another dispatcher led after us."""
        epoch = self.epoch
        if epoch is not None and seen_epoch > epoch:
            self.step_down(f"superseded: epoch {seen_epoch} wrote after ours ({epoch})")
        elif self._revision is not None and not self.valid():
            self.step_down(f"lease validity ran out {-self.remaining():.2f}s ago "
                           f"(last renewal sent {self._clock() - self._renewed_at:.2f}s ago)")
        if self._lost.is_set() or epoch is None or self._revision is None:
            raise LeaseLost(self._lost_reason or "not the leader")
        return epoch

    def step_down(self, reason: str) -> None:
        """Stop leading now; the key is left to expire (``keep`` raises LeaseLost)."""
        if self._lost.is_set():
            return
        self._lost_reason = reason
        self._lost.set()
        log.error("lease_step_down", holder=self.identity, epoch=self.epoch, reason=reason,
                  overdue_s=round(-self.remaining(), 3))
        self._revision = None

    async def holder(self) -> str | None:
        try:
            entry = await self._kv.get(LEASE_KEY)
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until we hold the lease (True) or ``stop`` is set (False)."""
        waited = False
        self._revision = self.epoch = None
        while not stop.is_set():
            sent = self._clock()
            try:
                revision = await asyncio.wait_for(self._kv.create(LEASE_KEY, self.identity.encode()),
                                                  self.request_timeout_s)
            except nats.js.errors.KeyWrongLastSequenceError:
                if not waited:
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        log.info("lease_standby", holder=await self.holder())
                waited = True
            except (nats.errors.Error, TimeoutError) as exc:
                # A JetStream leader election or a reconnect: keep trying, never give up. (A create
                # that timed out may have landed: then the key is ours but we do not know it, and
                # it expires after the TTL like a dead leader's.)
                log.warning("lease_unavailable", error=type(exc).__name__)
            else:
                self._lost = asyncio.Event()
                self._lost_reason = ""
                self._revision = self.epoch = revision
                self._renewed_at = sent
                self._valid_until = sent + self.validity_s
                log.info("lease_acquired", holder=self.identity, epoch=revision, waited=waited,
                         ttl_s=self.ttl_s, validity_s=self.validity_s)
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.acquire_every_s)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until ``stop``; raise LeaseLost as soon as we may no longer act as leader."""
        next_send = self._renewed_at + self.renew_every_s
        while not stop.is_set():
            if self._lost.is_set():
                raise LeaseLost(self._lost_reason)
            delay = min(next_send, self._valid_until) - self._clock()
            if delay > 0:
                await self._wait(stop, delay)
                continue
            self.check()  # validity ran out before a renewal succeeded: step down (raises)
            next_send = await self._renew()

    async def _renew(self) -> float:
        """One renewal; returns when the next one is due."""
        assert self._revision is not None
        sent = self._clock()
        timeout = max(0.0, min(self.request_timeout_s, self._valid_until - sent))
        try:
            revision = await asyncio.wait_for(
                self._kv.update(LEASE_KEY, self.identity.encode(), last=self._revision), timeout)
        except nats.js.errors.KeyWrongLastSequenceError:
            adopted = await self._adopt_own_renewal()
            if adopted is False:
                self.step_down("another dispatcher holds the lease, or it expired")
            return self._clock() + (0.0 if adopted else RETRY_PAUSE_S)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("lease_renew_failed", error=type(exc).__name__,
                        remaining_s=round(self.remaining(), 3))
            return self._clock() + RETRY_PAUSE_S
        if self._lost.is_set():
            return self._clock()
        self._revision = revision
        self._renewed_at = sent
        self._valid_until = sent + self.validity_s
        return sent + self.renew_every_s

    async def _adopt_own_renewal(self) -> bool | None:
        """A renewal that we cut off may have been stored all the same: the key then holds our
        identity at a newer revision. Adopt that revision (our validity is not extended: we do not
        know when it was sent) and renew again at once (True). False: the key is gone or someone
        else's. None: we cannot tell now (the next renewal, or validity running out, decides)."""
        try:
            entry = await asyncio.wait_for(self._kv.get(LEASE_KEY), self.request_timeout_s)
        except nats.js.errors.KeyNotFoundError:
            return False
        except (nats.errors.Error, TimeoutError):
            return None
        if (entry.value or b"").decode() != self.identity or entry.revision is None:
            return False
        if self._revision is None or entry.revision <= self._revision:
            return False
        self._revision = entry.revision
        return True

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._lost.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def release(self) -> None:
        """Graceful stop: delete our key (compare-and-set) so a standby need not wait for the TTL.
        Only while still valid: an overdue leader leaves the key to expire."""
        if self._revision is None:
            return
        revision, self._revision = self._revision, None
        if self._clock() < self._valid_until:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._kv.delete(LEASE_KEY, last=revision), self.request_timeout_s)
        log.info("lease_released", holder=self.identity, epoch=self.epoch)
        self.epoch = None
