"""The dispatcher's reconcile ``Observer``: counters and histograms of committed transitions.

The leader's committed transitions (before -> after, written by compare-and-set, so each is seen
once) drive the counters and histograms, and ``pod_created`` drives dispatch latency; a standby
runs no passes, so it counts nothing. Submissions are counted from the job index by the leader
whose epoch wrote the new record. ``watch_nodes`` (every replica: the API lists nodes) polls the
backend; the leader counts Ready -> NotReady transitions and every replica remembers the lost
node's last heartbeat, from which recovery time is measured (``broker.readmodel.recovery``).
What a scrape exports is in ``broker.metrics.scrape``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest

from broker import contract
from broker.backends import base
from broker.dispatcher import reconcile
from broker.dispatcher.action import Action
from broker.metrics import catalogue, scrape
from broker.metrics.catalogue import (
    DISRUPTIONS,
    LATENCY_BUCKETS,
    OUTCOMES,
    RECOVERY_BUCKETS,
    RETRY_REASONS,
    RUN_BUCKETS,
    WORK_LOST_BUCKETS,
)
from broker.metrics.waiting import OldestWaiting
from broker.readmodel import backlog, recovery

log = structlog.get_logger("jobq.metrics")

NodeListener = Callable[[base.NodeState], None]
RecordListener = Callable[[contract.JobRecord | None, contract.JobRecord], None]


class JobIndex(Protocol):
    """The dispatcher's job index, as far as the metrics read it."""

    def subscribe(self, listener: RecordListener) -> None: ...

    def get(self, job_id: str) -> contract.JobRecord | None: ...

    def count_by_phase(self) -> Mapping[str, collections.Counter[str]]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Sources:
    """What the metrics read, each through the narrowest interface that serves
    (``broker.http.server`` wires a dispatcher's)."""

    index: JobIndex
    index_ready: Callable[[], bool]
    """True once the index has loaded every record (earlier records are not new submissions)."""
    status: scrape.Status
    nats_connected: Callable[[], bool]
    list_nodes: Callable[[], Awaitable[Iterable[base.NodeState]]]
    read_backlog: Callable[[], Awaitable[backlog.Backlog]]


class Metrics(reconcile.Observer):
    """The metrics of one dispatcher; call ``bind(sources)`` once the dispatcher exists."""

    def __init__(
        self, *, clock: Callable[[], dt.datetime] = contract.utcnow, failures_kept: int = 50
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._sources: Sources | None = None
        r = self.registry
        self.submitted = Counter(
            "jobq_jobs_submitted", "Jobs accepted by intake (new job records).", ["queue"], registry=r
        )
        self.finished = Counter(
            "jobq_jobs_finished", "Jobs that reached a final phase.", ["queue", "outcome"], registry=r
        )
        self.retries = Counter(
            "jobq_retries",
            "Retries scheduled, by the failure that caused them.",
            ["queue", "reason"],
            registry=r,
        )
        self.attempts = Counter(
            "jobq_attempts", "Attempts created (first runs and retries).", ["queue"], registry=r
        )
        self.unschedulable_total = Counter(
            "jobq_unschedulable",
            "Pod placements refused because no Ready node fits (repeats while a job waits).",
            ["queue"],
            registry=r,
        )
        self.expired_total = Counter(
            "jobq_jobs_expired",
            "Finished jobs deleted when their retention ran out (record, results, artifacts).",
            ["queue"],
            registry=r,
        )
        self.node_failures = Counter(
            "jobq_node_failures", "Nodes that went from Ready to NotReady.", ["node"], registry=r
        )
        self.wait = Histogram(
            "jobq_wait_seconds",
            "Submit -> the job's first attempt to run.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dispatch = Histogram(
            "jobq_dispatch_latency_seconds",
            "Submit -> first pod created.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.run = Histogram(
            "jobq_run_seconds",
            "Attempt run time, started -> finished.",
            ["queue", "outcome"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.recovery = Histogram(
            "jobq_recovery_seconds",
            "Node lost (its last heartbeat) -> the replacement attempt running.",
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.checkpoints = Counter(
            "jobq_checkpoints",
            "Checkpoints written by task attempts (new ones seen on the jobs' pointers).",
            ["queue"],
            registry=r,
        )
        self.work_lost = Histogram(
            "jobq_work_lost_seconds",
            "Work a disrupted attempt threw away: its newest checkpoint (or start) -> its last sign of life.",
            ["reason"],
            buckets=WORK_LOST_BUCKETS,
            registry=r,
        )
        for reason in DISRUPTIONS:
            self.work_lost.labels(reason=reason.value)
        self.failures: collections.deque[recovery.NodeFailure] = collections.deque(maxlen=failures_kept)
        self._nodes: dict[str, base.NodeState] = {}
        self._node_listeners: list[NodeListener] = []
        self._dispatched: set[str] = set()
        """Jobs whose first pod was created (dispatch latency is observed once per job)."""
        self._queues: set[str] = set()
        self.pending: dict[str, int] = {}
        """Submissions not yet acked by intake, per queue (JOBQ_SUBMIT work-queue stream)."""
        self.dead_letters = 0
        """Messages in the dead-letter stream."""
        self.oldest = OldestWaiting()
        ProcessCollector(registry=r)
        self._queue(catalogue.DEFAULT_QUEUE)

    # --- wiring -------------------------------------------------------------------------------

    def bind(self, sources: Sources) -> None:
        if self._sources is not None:
            return
        self._sources = sources
        sources.index.subscribe(self._on_record)
        sources.index.subscribe(self.oldest.on_record)
        self.registry.register(
            scrape.StateCollector(
                index=sources.index,
                status=sources.status,
                nats_connected=sources.nats_connected,
                oldest=self.oldest,
                pending=lambda: self.pending,
                dead_letters=lambda: self.dead_letters,
                nodes=lambda: self._nodes,
                queues=lambda: self._queues,
                clock=self._clock,
            )
        )

    def on_node_change(self, listener: NodeListener) -> None:
        self._node_listeners.append(listener)

    def render(self) -> bytes:
        """The text exposition format: a standby's without the job, queue and node series
        (``scrape.LeaderFilter``), and without ``_created`` series."""
        return generate_latest(scrape.LeaderFilter(self.registry, self._leading))

    def _leading(self) -> bool:
        return self._sources is not None and self._sources.status.leader

    def _queue(self, queue: str) -> None:
        """Initialise a queue's label sets, so that rate() and increase() see zeros, not gaps."""
        if queue in self._queues:
            return
        self._queues.add(queue)
        self.submitted.labels(queue=queue)
        for outcome in OUTCOMES:
            self.finished.labels(queue=queue, outcome=outcome.value)
        for reason in RETRY_REASONS:
            self.retries.labels(queue=queue, reason=reason.value)
        self.attempts.labels(queue=queue)
        self.unschedulable_total.labels(queue=queue)
        self.expired_total.labels(queue=queue)
        self.checkpoints.labels(queue=queue)
        self.wait.labels(queue=queue)
        self.dispatch.labels(queue=queue)
        for state in (contract.AttemptState.SUCCEEDED, contract.AttemptState.FAILED):
            self.run.labels(queue=queue, outcome=state.value)

    # --- index: submissions -----------------------------------------------------------------

    def _on_record(self, before: contract.JobRecord | None, after: contract.JobRecord) -> None:
        self._queue(after.spec.queue)
        src = self._sources
        if before is not None or src is None or not src.index_ready() or after.attempts:
            return
        # Counted once, by the leader whose epoch wrote the new record: a standby (epoch 0) and a
        # deposed leader that sees its last records late count none, so sum() over replicas holds.
        if src.status.leader and after.epoch == src.status.epoch:
            self.submitted.labels(queue=after.spec.queue).inc()

    # --- observer hooks (leader) ------------------------------------------------------------

    def transition(self, before: contract.JobRecord, after: contract.JobRecord, action: Action) -> None:
        queue = after.spec.queue
        self._queue(queue)
        for reason, count in after.retries.items():
            delta = count - before.retries.get(reason, 0)
            if delta > 0:
                self.retries.labels(queue=queue, reason=reason).inc(delta)
        if len(after.attempts) > len(before.attempts):
            self.attempts.labels(queue=queue).inc(len(after.attempts) - len(before.attempts))
        if after.phase.is_terminal and not before.phase.is_terminal:
            self.finished.labels(queue=queue, outcome=after.phase.value).inc()
            self._dispatched.discard(after.spec.id)
        previous = {a.number: a for a in before.attempts}
        for attempt in after.attempts:
            old = previous.get(attempt.number)
            if attempt.started_at is not None and (old is None or old.started_at is None):
                self._started(after, attempt)
            if attempt.state.is_final and (old is None or not old.state.is_final):
                ran = recovery.seconds(attempt.started_at, attempt.finished_at)
                if ran is not None:
                    self.run.labels(queue=queue, outcome=attempt.state.value).observe(ran)
                if attempt.work_lost_s is not None and attempt.reason is not None:
                    self.work_lost.labels(reason=attempt.reason.value).observe(attempt.work_lost_s)

    def _started(self, record: contract.JobRecord, attempt: contract.Attempt) -> None:
        earlier = record.attempts[: attempt.number - 1]
        if not any(a.started_at for a in earlier):  # the job's first attempt to run at all
            waited = recovery.seconds(record.submitted_at, attempt.started_at)
            if waited is not None:
                self.wait.labels(queue=record.spec.queue).observe(waited)
        recovered = recovery.after_node_lost(record, attempt, lost_at=self.lost_at)
        if recovered is not None:
            self.recovery.observe(recovered)

    def lost_at(self, attempt: contract.Attempt) -> dt.datetime | None:
        """When the node of an attempt lost with node_lost was last heard from."""
        heartbeats = {name: node.last_heartbeat for name, node in self._nodes.items()}
        return recovery.lost_at(attempt, failures=self.failures, heartbeats=heartbeats)

    def expired(self, record: contract.JobRecord) -> None:
        self.expired_total.labels(queue=record.spec.queue).inc()

    def checkpointed(self, record: contract.JobRecord, count: int) -> None:
        self._queue(record.spec.queue)
        self.checkpoints.labels(queue=record.spec.queue).inc(count)

    def unschedulable(self, job_id: str) -> None:
        record = self._sources.index.get(job_id) if self._sources else None
        self.unschedulable_total.labels(queue=record.spec.queue if record else "unknown").inc()

    def pod_created(self, record: contract.JobRecord, spec: contract.PodSpec) -> None:
        """Observe submit -> the job's first pod confirmed created. That is usually attempt 1's,
        but attempt 1's create can fail or end uncertain (its node died mid-create), and then it is
        a later attempt's. An earlier attempt that ran had a pod (created by an earlier leader).
        Timed to the attempt's ``created_at`` (recorded before the create request), so it never
        exceeds the wait (submit -> started) by the create's round trip."""
        ran_before = any(a.started_at for a in record.attempts[: spec.attempt - 1])
        if record.spec.id in self._dispatched or ran_before:
            return
        self._dispatched.add(record.spec.id)
        attempt = next((a for a in record.attempts if a.number == spec.attempt), None)
        latency = recovery.seconds(record.submitted_at, attempt.created_at if attempt else self._clock())
        if latency is not None:
            self.dispatch.labels(queue=record.spec.queue).observe(latency)

    # --- nodes --------------------------------------------------------------------------------

    def observe_nodes(self, nodes: Iterable[base.NodeState]) -> None:
        """Record the backend's nodes; count Ready -> NotReady transitions (the leader only: every
        replica polls the same nodes)."""
        leading = self._leading()
        for node in nodes:
            known = self._nodes.get(node.name)
            self._nodes[node.name] = node
            if known is None:
                self.node_failures.labels(node=node.name)
            elif known.ready and not node.ready:
                if leading:
                    self.node_failures.labels(node=node.name).inc()
                self.failures.append(
                    recovery.NodeFailure(
                        node=node.name,
                        detected_at=node.not_ready_since or self._clock(),
                        last_heartbeat=node.last_heartbeat or known.last_heartbeat,
                    )
                )
                log.info("node_failure_recorded", node=node.name)
            if known is None or known.ready != node.ready or known.pods != node.pods:
                for listener in self._node_listeners:
                    listener(node)

    @property
    def nodes(self) -> dict[str, base.NodeState]:
        return dict(self._nodes)

    async def watch_nodes(self, stop: asyncio.Event, *, interval_s: float = 0.5) -> None:
        """Poll the backend's nodes until ``stop`` (backend-agnostic node failure detection)."""
        assert self._sources is not None, "bind() first"
        while not stop.is_set():
            try:
                self.observe_nodes(await self._sources.list_nodes())
            except Exception as exc:  # a flaky backend must not end the HTTP server
                log.warning("node_poll_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    # --- JetStream-side gauges --------------------------------------------------------------

    async def refresh(self) -> None:
        """Read submission backlog and dead-letter count from JetStream (best effort)."""
        assert self._sources is not None, "bind() first"
        try:
            found = await self._sources.read_backlog()
        except Exception as exc:
            log.warning("metrics_refresh_failed", error=repr(exc))
            return
        self.pending = found.pending
        self.dead_letters = found.dead_letters
