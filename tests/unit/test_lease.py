"""The leader lease's timing logic against a fake KV that keeps NATS KV's semantics: create only
if absent, compare-and-set updates, a key that expires ``ttl`` after the server *stored* its last
write. The clock is real time plus jumps (a jump is a SIGSTOP: the clock runs on while the
process does not)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import SimpleNamespace
from typing import cast

import nats.js.errors
import pytest
from nats.js.kv import KeyValue

from broker.dispatcher import lease as lease_mod
from broker.dispatcher.lease import Lease, LeaseLost


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@dataclasses.dataclass
class Stored:
    value: bytes
    revision: int
    stored_at: float


class FakeKV:
    def __init__(self, clock: Clock, *, ttl_s: float) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.seq = 0
        self.entry: Stored | None = None
        self.hang = False
        """Requests never get an answer (and are not applied)."""
        self.store_then_hang = 0
        """The next N updates are applied, but their answer never comes."""
        self.reply_delay_s = 0.0
        """Updates are applied at once, answered this much later."""
        self.updates = 0
        self.cut_off = 0
        """Requests cancelled while waiting (the caller's timeout)."""

    def live(self) -> Stored | None:
        if self.entry is not None and self.clock() >= self.entry.stored_at + self.ttl_s:
            self.entry = None  # expired: the server removed it
        return self.entry

    def expires_at(self) -> float:
        assert self.entry is not None
        return self.entry.stored_at + self.ttl_s

    async def _wait_forever(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cut_off += 1
            raise

    def _store(self, value: bytes) -> int:
        self.seq += 1
        self.entry = Stored(value, self.seq, self.clock())
        return self.seq

    async def create(self, key: str, value: bytes) -> int:
        if self.hang:
            await self._wait_forever()
        if self.live() is not None:
            raise nats.js.errors.KeyWrongLastSequenceError("wrong last sequence")
        return self._store(value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        self.updates += 1
        if self.hang:
            await self._wait_forever()
        entry = self.live()
        if entry is None or entry.revision != last:
            raise nats.js.errors.KeyWrongLastSequenceError("wrong last sequence")
        revision = self._store(value)
        if self.store_then_hang:
            self.store_then_hang -= 1
            await self._wait_forever()
        if self.reply_delay_s:
            await asyncio.sleep(self.reply_delay_s)
        return revision

    async def get(self, key: str) -> SimpleNamespace:
        entry = self.live()
        if entry is None:
            raise nats.js.errors.KeyNotFoundError
        return SimpleNamespace(value=entry.value, revision=entry.revision)

    async def delete(self, key: str, last: int) -> None:
        entry = self.live()
        if entry is None or entry.revision != last:
            raise nats.js.errors.KeyWrongLastSequenceError("wrong last sequence")
        self.entry = None

    def steal(self, identity: str) -> None:
        """Another dispatcher holds the key now (as after an expiry and a create)."""
        self._store(identity.encode())


def make(
    ttl_s: float = 1.0, identity: str = "a", *, kv: FakeKV | None = None, clock: Clock | None = None
) -> tuple[Lease, FakeKV, Clock]:
    clock = clock or Clock()
    kv = kv or FakeKV(clock, ttl_s=ttl_s)
    return Lease(cast(KeyValue, kv), ttl_s=ttl_s, identity=identity, clock=clock), kv, clock


async def leading(lease: Lease) -> None:
    assert await lease.acquire(asyncio.Event())
    assert lease.valid()


async def keep_until_lost(lease: Lease, *, timeout: float = 30.0) -> float:
    """Run ``keep``; it must raise LeaseLost (within ``timeout``, not hang). Returns the clock
    reading when it did."""
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(lease.keep(asyncio.Event()), timeout)
    return lease._clock()


def test_figures_are_fractions_of_the_ttl() -> None:
    lease, _, _ = make(ttl_s=5.0)
    assert (lease.renew_every_s, lease.request_timeout_s, lease.validity_s, lease.acquire_every_s) == (
        1.0,
        1.0,
        2.5,
        0.5,
    )
    # The validity window ends before the key can expire, and a renewal that is cut off still
    # leaves time for another one inside the window.
    assert lease.validity_s < lease.ttl_s
    assert lease.renew_every_s + lease.request_timeout_s < lease.validity_s


async def test_epoch_is_the_creation_revision_and_grows_across_leaders() -> None:
    a, kv, clock = make(identity="a")
    b, _, _ = make(identity="b", kv=kv, clock=clock)
    await leading(a)
    first = a.epoch
    assert first == kv.seq
    stop = asyncio.Event()
    keeper = asyncio.create_task(a.keep(stop))
    while kv.seq < first + 3:  # some renewals: the revision moves on, the epoch does not
        await asyncio.sleep(0.05)
    assert a.epoch == first
    stop.set()
    await keeper
    standby = asyncio.create_task(b.acquire(asyncio.Event()))
    await asyncio.sleep(3 * b.acquire_every_s)
    assert not standby.done(), "the standby must not get a live key"
    clock.jump(kv.ttl_s)  # a pauses past the TTL; its key expires
    assert await asyncio.wait_for(standby, 10)
    assert b.epoch is not None and first is not None and b.epoch > first + 3
    with pytest.raises(LeaseLost):
        a.check()


async def test_validity_counts_from_the_send_time_of_the_renewal() -> None:
    lease, kv, _ = make(ttl_s=2.0)
    await leading(lease)
    kv.reply_delay_s = 0.2  # a slow answer: stored at once, answered later
    stop = asyncio.Event()
    keeper = asyncio.create_task(lease.keep(stop))
    start = kv.seq
    while kv.seq < start + 2:
        await asyncio.sleep(0.02)
    await asyncio.sleep(kv.reply_delay_s + 0.1)
    stop.set()
    await keeper
    assert kv.entry is not None
    # Authority is measured from when we sent, which is before the server stored it: it ends
    # ttl/2 before the earliest moment the key can expire, whatever the reply took.
    assert lease.renewed_at <= kv.entry.stored_at
    assert lease.renewed_at + lease.validity_s <= kv.expires_at() - (lease.ttl_s - lease.validity_s)


async def test_hung_renewals_are_cut_off_and_the_leader_steps_down_before_the_key_expires() -> None:
    lease, kv, _ = make(ttl_s=2.0)
    await leading(lease)
    kv.hang = True
    expires_at = kv.expires_at()
    lost_at = await keep_until_lost(lease)
    assert kv.cut_off >= 2, "each renewal request is bounded, then tried again"
    assert kv.updates >= 2
    assert lost_at < expires_at, "stepped down while the key still stood: no standby could lead yet"
    assert not lease.valid() and not lease.is_leader
    with pytest.raises(LeaseLost):
        lease.check()
    await lease.release()
    assert kv.live() is not None, "an overdue leader leaves its key to expire"


async def test_a_paused_leader_stops_on_waking_without_renewing() -> None:
    lease, kv, clock = make(ttl_s=2.0)
    await leading(lease)
    keeper = asyncio.create_task(lease.keep(asyncio.Event()))
    await asyncio.sleep(0.1)
    renewals = kv.updates
    # SIGSTOP for longer than the validity window but shorter than the TTL: the key is still ours
    # and a renewal would succeed, but our authority lapsed while we slept.
    clock.jump(lease.validity_s + 0.1)
    assert kv.live() is not None
    with pytest.raises(LeaseLost, match="validity ran out"):
        lease.check()
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(keeper, 10)
    assert kv.updates == renewals, "no renewal after waking up overdue"
    assert not lease.valid()


async def test_a_record_from_a_newer_epoch_makes_the_leader_step_down() -> None:
    lease, _, _ = make()
    await leading(lease)
    assert lease.epoch is not None
    assert lease.check(lease.epoch) == lease.epoch  # our own (or older) epochs are fine
    with pytest.raises(LeaseLost, match="superseded"):
        lease.check(lease.epoch + 1)
    assert not lease.is_leader
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(lease.keep(asyncio.Event()), 10)


async def test_another_holder_ends_the_leadership_at_the_next_renewal() -> None:
    lease, kv, _ = make()
    await leading(lease)
    kv.steal("b")
    await keep_until_lost(lease)
    assert not lease.is_leader


async def test_a_renewal_stored_after_its_timeout_is_adopted() -> None:
    lease, kv, _ = make(ttl_s=5.0)
    await leading(lease)
    kv.store_then_hang = 1  # stored, but we give up waiting for the answer
    stop = asyncio.Event()
    keeper = asyncio.create_task(lease.keep(stop))
    while kv.cut_off < 1 or kv.updates < 4:
        assert not keeper.done(), keeper
        await asyncio.sleep(0.05)
    assert lease.valid() and lease.is_leader
    assert kv.entry is not None and kv.entry.value == b"a"
    stop.set()
    await keeper


async def test_acquire_bounds_each_create_and_stops_on_request() -> None:
    lease, kv, _ = make(ttl_s=1.0)
    kv.hang = True
    stop = asyncio.Event()
    task = asyncio.create_task(lease.acquire(stop))
    while kv.cut_off < 2:
        assert not task.done()
        await asyncio.sleep(0.05)
    stop.set()
    assert await asyncio.wait_for(task, 10) is False
    assert not lease.is_leader and lease.epoch is None


async def test_graceful_release_deletes_the_key_for_the_standby() -> None:
    lease, kv, _ = make()
    await leading(lease)
    await lease.release()
    assert kv.live() is None
    assert not lease.is_leader


def test_the_default_clock_counts_while_the_process_is_stopped() -> None:
    clock = lease_mod._default_clock()
    before = clock()
    time.sleep(0.01)
    assert clock() > before
    if hasattr(time, "CLOCK_BOOTTIME"):
        assert abs(clock() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0


async def test_cancel_all_outlasts_swallowed_cancellations() -> None:
    """A leader that lost its lease must not keep tasks that swallowed their cancellation (Python
    3.11's wait_for does, when its inner future completes at the same moment)."""
    from broker.dispatcher.service import cancel_all

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed >= 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task]), 30)
    assert task.cancelled() and swallowed == 3
