"""Prometheus metrics of one dispatcher, in its own CollectorRegistry (no global registry).

Three sources feed them:

* ``Metrics`` is the dispatcher's reconcile ``Observer``: the leader's committed transitions
  (before -> after, written by compare-and-set, so each is seen once) drive the counters and
  histograms, and ``pod_created`` drives dispatch latency.
* The job index (every dispatcher follows it, leader or standby) counts new submissions and
  gives the current state gauges at scrape time. The metrics read it, the dispatcher's status,
  the backend's nodes and the JetStream backlog through the narrow ``Sources``.
* ``watch_nodes`` polls the cluster backend and counts Ready -> NotReady transitions; it also
  remembers the lost node's last heartbeat, from which recovery time is measured
  (``broker.readmodel.recovery`` defines it, for the API, the demo and the chaos probes too).

Names follow Prometheus conventions: one ``jobq_`` prefix, base units (seconds), ``_total``
counters, and only low-cardinality labels (queue, outcome, reason, state; node only on node
metrics). docs/observability.md lists them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import contract
from broker.backends import base
from broker.dispatcher import reconcile
from broker.dispatcher.action import Action
from broker.readmodel import backlog, recovery

log = structlog.get_logger("jobq.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
RECOVERY_BUCKETS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600)

OUTCOMES = (contract.JobPhase.SUCCEEDED, contract.JobPhase.DEAD, contract.JobPhase.CANCELLED)
_NOT_RETRIED = {
    contract.FailureReason(r)
    for r in ("cancelled", "invalid", "undeliverable", "non_retryable", "start_error", "refused")
}
RETRY_REASONS = tuple(r for r in contract.FailureReason if r not in _NOT_RETRIED)

METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "jobq_jobs_submitted_total": ("counter", ("queue",)),
    "jobq_jobs_finished_total": ("counter", ("queue", "outcome")),
    "jobq_retries_total": ("counter", ("queue", "reason")),
    "jobq_attempts_total": ("counter", ("queue",)),
    "jobq_unschedulable_total": ("counter", ("queue",)),
    "jobq_node_failures_total": ("counter", ("node",)),
    "jobq_reconciles_total": ("counter", ()),
    "jobq_reconcile_errors_total": ("counter", ()),
    "jobq_wait_seconds": ("histogram", ("queue",)),
    "jobq_dispatch_latency_seconds": ("histogram", ("queue",)),
    "jobq_run_seconds": ("histogram", ("queue", "outcome")),
    "jobq_recovery_seconds": ("histogram", ()),
    "jobq_jobs": ("gauge", ("queue", "state")),
    "jobq_queue_depth": ("gauge", ("queue",)),
    "jobq_running_attempts": ("gauge", ("queue",)),
    "jobq_dead_letters": ("gauge", ()),
    "jobq_leader": ("gauge", ()),
    "jobq_nats_connected": ("gauge", ()),
    "jobq_node_ready": ("gauge", ("node",)),
    "jobq_node_pods": ("gauge", ("node",)),
}
"""Every metric this module exposes: name -> (type, labels). docs/observability.md explains each."""

NodeListener = Callable[[base.NodeState], None]
RecordListener = Callable[[contract.JobRecord | None, contract.JobRecord], None]


class JobIndex(Protocol):
    """The dispatcher's job index, as far as the metrics read it."""

    def subscribe(self, listener: RecordListener) -> None: ...

    def get(self, job_id: str) -> contract.JobRecord | None: ...

    def count_by_phase(self) -> Mapping[str, collections.Counter[str]]: ...


class Status(Protocol):
    """The dispatcher's status counters."""

    leader: bool
    reconciles: int
    errors: int


@dataclasses.dataclass(frozen=True, slots=True)
class Sources:
    """What the metrics read, each through the narrowest interface that serves
    (``broker.http.server`` wires a dispatcher's)."""

    index: JobIndex
    index_ready: Callable[[], bool]
    """True once the index has loaded every record (earlier records are not new submissions)."""
    status: Status
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

    # --- wiring -------------------------------------------------------------------------------

    def bind(self, sources: Sources) -> None:
        if self._sources is not None:
            return
        self._sources = sources
        sources.index.subscribe(self._on_record)
        self.registry.register(_StateCollector(self, sources))

    def on_node_change(self, listener: NodeListener) -> None:
        self._node_listeners.append(listener)

    def render(self) -> bytes:
        """The text exposition format, without the ``_created`` series (of no use to PromQL)."""
        return generate_latest(_WithoutCreated(self.registry))

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

    # --- index: submissions -----------------------------------------------------------------

    def _on_record(self, before: contract.JobRecord | None, after: contract.JobRecord) -> None:
        self._queue(after.spec.queue)
        src = self._sources
        if before is None and src is not None and src.index_ready() and not after.attempts:
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
        """Record the backend's nodes; count Ready -> NotReady transitions."""
        for node in nodes:
            known = self._nodes.get(node.name)
            self._nodes[node.name] = node
            if known is None:
                self.node_failures.labels(node=node.name)
            elif known.ready and not node.ready:
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


class _WithoutCreated(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class _StateCollector(Collector):
    """Gauges computed at scrape time from the index, the backend's nodes and the dispatcher."""

    def __init__(self, metrics: Metrics, sources: Sources) -> None:
        self._metrics = metrics
        self._sources = sources

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        src, m = self._sources, self._metrics
        jobs = GaugeMetricFamily("jobq_jobs", "Job records by current state.", labels=["queue", "state"])
        depth = GaugeMetricFamily(
            "jobq_queue_depth",
            "Jobs waiting to run: submissions not yet taken in plus queued job records.",
            labels=["queue"],
        )
        running = GaugeMetricFamily(
            "jobq_running_attempts", "Jobs with an attempt running (or starting).", labels=["queue"]
        )
        counts = src.index.count_by_phase()
        for queue in sorted(set(counts) | set(m.pending)):
            by_phase = counts.get(queue, collections.Counter())
            for phase in contract.JobPhase:
                jobs.add_metric([queue, phase.value], by_phase[phase.value])
            depth.add_metric([queue], by_phase[contract.JobPhase.QUEUED.value] + m.pending.get(queue, 0))
            running.add_metric([queue], by_phase[contract.JobPhase.RUNNING.value])
        yield from (jobs, depth, running)
        yield GaugeMetricFamily(
            "jobq_dead_letters", "Records in the dead-letter stream.", value=m.dead_letters
        )
        yield GaugeMetricFamily(
            "jobq_leader",
            "1 while this dispatcher holds the leader lease.",
            value=1 if src.status.leader else 0,
        )
        yield GaugeMetricFamily(
            "jobq_nats_connected",
            "1 while the dispatcher's NATS connection is up.",
            value=1 if src.nats_connected() else 0,
        )
        ready = GaugeMetricFamily("jobq_node_ready", "1 if the node is Ready.", labels=["node"])
        pods = GaugeMetricFamily("jobq_node_pods", "Active pods on the node.", labels=["node"])
        for name, node in sorted(m.nodes.items()):
            ready.add_metric([name], 1 if node.ready else 0)
            pods.add_metric([name], node.pods)
        yield from (ready, pods)
        yield CounterMetricFamily(
            "jobq_reconciles", "Reconcile passes completed.", value=src.status.reconciles
        )
        yield CounterMetricFamily(
            "jobq_reconcile_errors", "Reconcile passes that raised.", value=src.status.errors
        )
