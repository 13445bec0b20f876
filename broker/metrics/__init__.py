"""Prometheus metrics of one dispatcher, in its own CollectorRegistry (no global registry).

* ``observer.Metrics`` is the dispatcher's reconcile ``Observer`` (counters and histograms of
  the leader's committed transitions) and owns the registry.
* ``scrape`` computes the gauges at scrape time and hides the job, queue and node series on a
  standby, so that summing over replicas never double counts (docs/observability.md).
* ``waiting`` keeps the age of the oldest waiting job per queue without scanning every record.
* ``catalogue`` names every metric and says which ones every replica exports.
"""

from broker.metrics.catalogue import CONTENT_TYPE, EVERY_REPLICA, METRICS, leader_only
from broker.metrics.observer import JobIndex, Metrics, Sources

__all__ = ["CONTENT_TYPE", "EVERY_REPLICA", "METRICS", "JobIndex", "Metrics", "Sources", "leader_only"]
