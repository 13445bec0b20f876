"""What a scrape reads: the gauges computed at scrape time, and the leader-only filter.

Only the leader exports the job, queue and node series (``catalogue.leader_only``); a standby
exports ``jobq_leader 0``, ``jobq_nats_connected``, ``jobq_build_info``, its reconcile counters
and ``process_*``. So summing a metric over the replicas counts each job once, and a dashboard
needs no ``max()`` guesswork.
"""

from __future__ import annotations

import collections
import datetime as dt
import importlib.metadata
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import contract
from broker.backends import base
from broker.metrics import catalogue
from broker.metrics.waiting import OldestWaiting


class Status(Protocol):
    """The dispatcher's status, as far as the metrics read it."""

    leader: bool
    epoch: int
    reconciles: int
    errors: int


class PhaseCounts(Protocol):
    def count_by_phase(self) -> Mapping[str, collections.Counter[str]]: ...


def jobq_version() -> str:
    try:
        return importlib.metadata.version("jobq")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


BUILD_LABELS: dict[str, str] = {
    "version": jobq_version(),
    "contract": str(contract.CONTRACT_VERSION),
    "python": platform.python_version(),
}


class LeaderFilter(Collector):
    """The registry's families as exposed: a standby's without the leader-only ones, and nobody's
    ``_created`` series (of no use to PromQL)."""

    def __init__(self, registry: CollectorRegistry, is_leader: Callable[[], bool]) -> None:
        self._registry = registry
        self._is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        leader = self._is_leader()
        for family in self._registry.collect():
            if not leader and catalogue.leader_only(family.name):
                continue
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class StateCollector(Collector):
    """Gauges computed at scrape time from the index, the backend's nodes and the dispatcher."""

    def __init__(
        self,
        *,
        index: PhaseCounts,
        status: Status,
        nats_connected: Callable[[], bool],
        oldest: OldestWaiting,
        pending: Callable[[], Mapping[str, int]],
        dead_letters: Callable[[], int],
        nodes: Callable[[], Mapping[str, base.NodeState]],
        queues: Callable[[], Iterable[str]],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._index, self._status, self._nats_connected = index, status, nats_connected
        self._oldest, self._pending, self._dead_letters = oldest, pending, dead_letters
        self._nodes, self._queues, self._clock = nodes, queues, clock

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        status = self._status
        yield GaugeMetricFamily(
            "jobq_leader", "1 while this dispatcher holds the leader lease.", value=1 if status.leader else 0
        )
        yield GaugeMetricFamily(
            "jobq_nats_connected",
            "1 while the dispatcher's NATS connection is up.",
            value=1 if self._nats_connected() else 0,
        )
        info = GaugeMetricFamily(
            "jobq_build_info", "Always 1; the labels say what runs.", labels=list(BUILD_LABELS)
        )
        info.add_metric(list(BUILD_LABELS.values()), 1)
        yield info
        yield CounterMetricFamily("jobq_reconciles", "Reconcile passes completed.", value=status.reconciles)
        yield CounterMetricFamily(
            "jobq_reconcile_errors", "Reconcile passes that raised.", value=status.errors
        )
        if status.leader:  # a standby's view of the jobs would count them a second time
            yield from self._jobs()
            yield from self._node_gauges()

    def _jobs(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("jobq_jobs", "Job records by current state.", labels=["queue", "state"])
        depth = GaugeMetricFamily(
            "jobq_queue_depth",
            "Jobs waiting to run: submissions not yet taken in plus queued job records.",
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "jobq_oldest_waiting_seconds",
            "How long the queue's oldest queued job has waited since it could last run (0: none).",
            labels=["queue"],
        )
        running = GaugeMetricFamily(
            "jobq_running_attempts", "Jobs with an attempt running (or starting).", labels=["queue"]
        )
        counts = self._index.count_by_phase()
        pending = self._pending()
        ages = self._oldest.ages(self._clock())
        for queue in sorted(set(counts) | set(pending) | set(self._queues())):
            by_phase = counts.get(queue, collections.Counter())
            for phase in contract.JobPhase:
                jobs.add_metric([queue, phase.value], by_phase[phase.value])
            depth.add_metric([queue], by_phase[contract.JobPhase.QUEUED.value] + pending.get(queue, 0))
            oldest.add_metric([queue], ages.get(queue, 0.0))
            running.add_metric([queue], by_phase[contract.JobPhase.RUNNING.value])
        yield from (jobs, depth, oldest, running)
        yield GaugeMetricFamily(
            "jobq_dead_letters", "Records in the dead-letter stream.", value=self._dead_letters()
        )

    def _node_gauges(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("jobq_node_ready", "1 if the node is Ready.", labels=["node"])
        pods = GaugeMetricFamily("jobq_node_pods", "Active pods on the node.", labels=["node"])
        for name, node in sorted(self._nodes().items()):
            ready.add_metric([name], 1 if node.ready else 0)
            pods.add_metric([name], node.pods)
        yield from (ready, pods)
