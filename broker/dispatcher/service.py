"""The dispatcher service: leader election, intake, the reconcile workers and their wake-ups.

Wake-ups come from submissions, the backend's pod/node watch, timers that ``decide`` asks for,
the changes that release waiting jobs (``waiting_room``), and a resync (the level-triggered
safety net): every unfinished job that nothing else will look at soon, every
``resync_interval_s``; jobs parked waiting, spread over ``resync_parked_s``. A standby dispatcher
keeps its index warm and serves the API, and takes over within one lease TTL of the leader's
death.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from broker import contract, settings, store
from broker.backends import base
from broker.dispatcher import intake, job_requests, lease, logs, reconcile, undeliverable, waiting_room
from broker.dispatcher.expiry import Sweeper
from broker.dispatcher.index import JobIndex
from broker.dispatcher.limits import Limits
from broker.dispatcher.retention import RetentionPolicy
from broker.dispatcher.workqueue import WorkQueue

log = structlog.get_logger("jobq.dispatcher")


@dataclasses.dataclass(slots=True)
class Status:
    leader: bool = False
    synced: bool = False
    epoch: int = 0
    """Our leader epoch while we lead (the lease's fencing token); 0 on standby."""
    reconciles: int = 0
    errors: int = 0


class Dispatcher:
    def __init__(self, *, st: store.Store, backend: base.ClusterBackend, config: settings.Settings,
                 observer: reconcile.Observer | None = None, identity: str | None = None) -> None:
        d = config.dispatcher
        self.store = st
        self.backend = backend
        self.settings = config
        self.index = JobIndex()
        self.heartbeats = reconcile.Heartbeats(silence_s=d.node_silence_s)
        self.status = Status()
        self.lease = lease.Lease(st.leader, ttl_s=d.lease_ttl_s, identity=identity)
        self.queue = WorkQueue(priority_of=self._priority)
        self.observer = observer or reconcile.Observer()
        self.limits = Limits.from_settings(config)
        self.reconciler = reconcile.Reconciler(
            store=st, backend=backend, index=self.index, heartbeats=self.heartbeats,
            limits=self.limits, queue_limits=dict(d.queue_limits), observer=self.observer,
            wake=self.queue.add, fence=self.lease)
        self.intake = intake.Intake(st, on_job=self.queue.add, fence=self.lease.check,
                                    queue_policy=d.queue_policy)
        self.undeliverable = undeliverable.Undeliverable(st)
        self.sweeper = Sweeper(
            st, index=self.index, policy=RetentionPolicy(d.retention_s, dict(d.queue_retention)),
            fence=self.lease.check, idempotency_window_s=d.idempotency_window_s,
            on_expired=self.observer.expired)
        self.index_ready = asyncio.Event()
        self.index.subscribe(self._on_external_change)
        self.index.subscribe(self._forget_ended_attempts)

    def _on_external_change(self, before: contract.JobRecord | None, after: contract.JobRecord) -> None:
        """Wake a job that someone else changed: a cancellation, or a dead job re-driven."""
        if not self.status.leader or before is None:
            return
        if (after.cancel_requested and not before.cancel_requested) or (
                before.phase.is_terminal and not after.phase.is_terminal):
            self.queue.add(after.spec.id)

    def _forget_ended_attempts(self, before: contract.JobRecord | None, after: contract.JobRecord) -> None:
        """Heartbeats of attempts that ended no longer say anything about their node."""
        if after.phase.is_terminal:
            self.heartbeats.forget(after.spec.id)
            return
        for attempt in after.attempts:
            if attempt.state.is_final:
                self.heartbeats.forget(after.spec.id, attempt.number)

    def _priority(self, job_id: str) -> float:
        record = self.index.get(job_id)
        return float(record.spec.priority) if record else 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``: follow the index always, do the work while we are leader."""
        heartbeat_sub = await self.store.nc.subscribe(contract.HEARTBEAT_WILDCARD, cb=self._on_heartbeat)
        log_server = await logs.server(self.store.nc, lookup=logs.record_lookup(self.index, self.store),
                                       backend=self.backend).start()
        request_server = await job_requests.server(self.store.nc, self.store).start()
        self.heartbeats.listening_since = contract.utcnow()
        watcher = asyncio.create_task(self.store.watch_jobs(self.index.put, self.index_ready,
                                                            self.index.remove), name="index-watch")
        try:
            await self.index_ready.wait()
            self._seed_node_heartbeats()
            while not stop.is_set():
                if not await self.lease.acquire(stop):
                    break
                self.status.leader = True
                self.status.epoch = self.lease.epoch or 0
                try:
                    await self._lead(stop)
                except* lease.LeaseLost as group:
                    log.error("lease_lost", error=str(group.exceptions[0]), epoch=self.status.epoch)
                finally:
                    self.status.leader = False
                    self.status.synced = False
                    self.status.epoch = 0
            await self.lease.release()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            with contextlib.suppress(Exception):
                await heartbeat_sub.unsubscribe()
            await log_server.stop()
            await request_server.stop()
            self.queue.close()

    async def _lead(self, stop: asyncio.Event) -> None:
        """Lead until ``stop`` (graceful: passes in flight finish) or until the lease is lost
        (raises LeaseLost at once: every pass checks the lease before acting anyway)."""
        work_stop = asyncio.Event()
        lost: list[lease.LeaseLost] = []

        async def keep() -> None:
            try:
                await self.lease.keep(work_stop)
            except lease.LeaseLost as exc:
                lost.append(exc)
            finally:
                work_stop.set()

        async with asyncio.TaskGroup() as tg:
            keeper = tg.create_task(keep(), name="lease")
            stopper = tg.create_task(stop.wait(), name="stop")
            synced = tg.create_task(self.backend.wait_synced(), name="backend-sync")
            tasks: list[asyncio.Task[Any]] = [keeper, stopper, synced]
            await asyncio.wait({synced, stopper, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if synced.done() and not work_stop.is_set() and not stop.is_set():
                tasks += self._start_leading(tg, work_stop)
                await asyncio.wait({stopper, keeper}, return_when=asyncio.FIRST_COMPLETED)
            # Shutting down (or lost the lease): stop taking work; when shutting down, let the
            # passes in flight finish.
            work_stop.set()
            if not lost:
                intake_task = [t for t in tasks if t.get_name() == "intake"]
                if intake_task:
                    await asyncio.wait(intake_task, timeout=self.settings.dispatcher.shutdown_grace_s)
                deadline = asyncio.get_running_loop().time() + self.settings.dispatcher.shutdown_grace_s
                while self.queue.in_flight and asyncio.get_running_loop().time() < deadline and not lost:
                    await asyncio.sleep(0.05)
            await cancel_all(tasks)
        if lost:
            raise lost[0]

    def _start_leading(self, tg: asyncio.TaskGroup, work_stop: asyncio.Event) -> list[asyncio.Task[None]]:
        self.status.synced = True
        for job_id in self.index.active_ids():
            self.queue.add(job_id)
        log.info("dispatcher_leading", holder=self.lease.identity, epoch=self.lease.epoch,
                 active_jobs=len(self.index.active_ids()), backend=self.backend.name)
        return [
            tg.create_task(self._supervised("intake", lambda: self.intake.run(work_stop)), name="intake"),
            tg.create_task(self._supervised("undeliverable", lambda: self.undeliverable.run(work_stop)),
                           name="undeliverable"),
            tg.create_task(self._supervised("backend-watch", self._watch_backend), name="backend-watch"),
            tg.create_task(self._supervised("resync", lambda: self._resync(work_stop)), name="resync"),
            tg.create_task(self._supervised("expiry", lambda: self.sweeper.run(work_stop)), name="expiry"),
            tg.create_task(self._supervised("checkpoints",
                                            lambda: self.reconciler.checkpoints.watch(work_stop)),
                           name="checkpoints"),
            tg.create_task(self._supervised("node-silence", lambda: self._watch_silence(work_stop)),
                           name="node-silence"),
            tg.create_task(self._supervised("capacity", lambda: self._watch_capacity(work_stop)),
                           name="capacity"),
            *(tg.create_task(self._worker(n), name=f"reconcile-{n}")
              for n in range(self.settings.dispatcher.workers)),
        ]

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a long-lived loop; if it crashes, log it and start it again after a pause."""
        delay = 0.5
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.status.errors += 1
                log.error("loop_crashed", loop=name, error=repr(exc), restart_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _worker(self, n: int) -> None:
        while True:
            job_id = await self.queue.get()
            try:
                requeue = await self.reconciler.reconcile(job_id)
                self.status.reconciles += 1
            except asyncio.CancelledError:
                self.queue.done(job_id)
                raise
            except lease.LeaseLost as exc:  # fenced: we step down (the lease keeper raises too)
                log.info("reconcile_fenced", job_id=job_id, reason=str(exc), worker=n)
                requeue = None
            except Exception as exc:
                self.status.errors += 1
                log.warning("reconcile_failed", job_id=job_id, error=repr(exc), worker=n)
                requeue = 1.0
            self.queue.done(job_id)
            if requeue is not None:
                self.queue.add_after(job_id, requeue)

    async def _watch_backend(self) -> None:
        async for job_id in self.backend.watch():
            self.queue.add(job_id)

    async def _resync(self, stop: asyncio.Event) -> None:
        """Look at every unfinished job that nothing will bring otherwise (not queued, no timer,
        not parked in the waiting room); sweep the
        parked ones a slice per tick, so each is looked at every ``resync_parked_s`` and the cost
        of a backlog stays flat (docs/design/dispatcher.md, "Waiting without polling")."""
        interval = self.settings.dispatcher.resync_interval_s
        sweep = waiting_room.Sweep(ticks=self.settings.dispatcher.resync_parked_s / interval)
        parked = self.reconciler.waiting.parked
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for job_id in sweep.take(lambda: [j for j in self.index.active_ids() if parked(j)],
                                     count=len(self.reconciler.waiting)):
                self.queue.add(job_id)
            for job_id in self.index.active_ids():
                if not parked(job_id) and not self.queue.pending(job_id):
                    self.queue.add(job_id)

    async def _watch_silence(self, stop: asyncio.Event) -> None:
        """Wake the jobs of a node as soon as its attempts' heartbeats all fall silent together."""
        interval = min(0.5, self.heartbeats.silence_s / 4)
        prune_every = max(1, int(600 / interval))
        suspects = self.heartbeats.nodes.suspects()
        for tick in itertools.count():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            nodes = self.heartbeats.nodes
            before, suspects = suspects, nodes.suspects()
            if before - suspects:  # a node no new attempt could go to may take them again
                self.reconciler.waiting.nodes_changed(self.settings.dispatcher.workers)
            for node in nodes.newly_silent():
                attempts = nodes.attempts_on(node)
                log.warning("node_silent", node=node, attempts=len(attempts),
                            silent_s=round(nodes.silent_for(node), 1))
                for job_id, _ in attempts:
                    self.queue.add(job_id)
            if tick % prune_every == prune_every - 1:
                nodes.prune(older_than_s=600)

    async def _watch_capacity(self, stop: asyncio.Event) -> None:
        """Wake waiting jobs when the nodes change (one joins, leaves, turns Ready or NotReady, or
        is resized) or room frees on one, once a second: cost grows with nodes, not with waiting
        jobs. A pass that ends an attempt wakes the line at once; this catches the rest (a pod
        that ended without a pass of ours, a node agent that released room late)."""
        room = self.settings.dispatcher.workers
        seen: frozenset[tuple[str, bool, contract.Resources]] | None = None
        used: dict[str, tuple[float, int]] = {}
        while not stop.is_set():
            nodes = await self.backend.list_nodes()
            shape = frozenset((n.name, n.ready, n.capacity) for n in nodes)
            now_used = {n.name: (n.allocated_cpu, n.allocated_memory) for n in nodes if n.ready}
            for node in nodes:
                if node.ready and used and node.name not in used:  # NotReady before, Ready now
                    self.heartbeats.nodes.vouched(node.name)
            if seen is not None and shape != seen:
                self.reconciler.waiting.nodes_changed(room)
            elif any(cpu < used.get(name, (cpu, memory))[0] or memory < used.get(name, (cpu, memory))[1]
                     for name, (cpu, memory) in now_used.items()):
                self.reconciler.waiting.room_freed(room)
            seen, used = shape, now_used
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def _seed_node_heartbeats(self) -> None:
        """A dispatcher that starts mid-incident has heard no heartbeat yet. Attempts that have
        run past their startup allowance were beating, so count them as heard just now: a node
        whose attempts then stay silent while others beat is told apart within the silence window,
        not only when its Lease expires."""
        now = contract.utcnow()
        allowance = dt.timedelta(seconds=self.settings.dispatcher.startup_timeout_s)
        for record in self.index.records():
            current = record.current
            if (record.phase == contract.JobPhase.RUNNING and record.spec.task and current is not None
                    and current.state == contract.AttemptState.RUNNING and current.node
                    and current.started_at is not None and now - current.started_at > allowance):
                self.heartbeats.nodes.record(current.node, record.spec.id, current.number)

    def _node_of(self, beat: contract.AttemptHeartbeat) -> str | None:
        """The node of a beating attempt as *we* observed it (the record), if it is the current
        attempt and still running; stale attempts say nothing about their node."""
        record = self.index.get(beat.job_id)
        current = record.current if record else None
        if record is None or current is None or record.phase.is_terminal:
            return None
        if current.number != beat.attempt or current.state.is_final:
            return None
        return current.node or beat.node

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = contract.AttemptHeartbeat.model_validate_json(msg.data)
        except ValidationError:
            log.warning("heartbeat_invalid", subject=msg.subject)
            return
        self.heartbeats.record(beat, now=contract.utcnow(), node=self._node_of(beat))


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again as long as one runs:
    Python 3.11's ``asyncio.wait_for`` (used by nats-py for every request) swallows a cancellation
    that arrives as its inner future completes, and a task that swallowed it would go on acting."""
    pending = {t for t in tasks if not t.done()}
    for rounds in itertools.count(1):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending and rounds % 10 == 0:  # a task that ignores cancellation: make the hang visible
            log.warning("tasks_still_running_after_cancel", tasks=sorted(t.get_name() for t in pending),
                        seconds=rounds * 0.5)
