"""Every metric a dispatcher exposes, and which of them a standby exposes too.

Names follow Prometheus conventions: one ``jobq_`` prefix, base units (seconds), ``_total``
counters, and only low-cardinality labels (queue, outcome, reason, state; node only on node
metrics). docs/observability.md lists them with their meaning.
"""

from __future__ import annotations

from broker import contract

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
RECOVERY_BUCKETS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600)
WORK_LOST_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400)

OUTCOMES = (contract.JobPhase.SUCCEEDED, contract.JobPhase.DEAD, contract.JobPhase.CANCELLED)
_NOT_RETRIED = {
    contract.FailureReason(r)
    for r in ("cancelled", "invalid", "undeliverable", "non_retryable", "start_error", "refused")
}
RETRY_REASONS = tuple(r for r in contract.FailureReason if r not in _NOT_RETRIED)
DISRUPTIONS = tuple(r for r in contract.FailureReason if r.is_disruption)
"""The reasons of attempts that can lose work (``jobq_work_lost_seconds``)."""

DEFAULT_QUEUE: str = contract.JobSpec.model_fields["queue"].default
"""Always exported (at zero before its first job), so rate() over it starts from a sample."""

METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "jobq_jobs_submitted_total": ("counter", ("queue",)),
    "jobq_jobs_finished_total": ("counter", ("queue", "outcome")),
    "jobq_retries_total": ("counter", ("queue", "reason")),
    "jobq_attempts_total": ("counter", ("queue",)),
    "jobq_unschedulable_total": ("counter", ("queue",)),
    "jobq_jobs_expired_total": ("counter", ("queue",)),
    "jobq_node_failures_total": ("counter", ("node",)),
    "jobq_reconciles_total": ("counter", ()),
    "jobq_reconcile_errors_total": ("counter", ()),
    "jobq_wait_seconds": ("histogram", ("queue",)),
    "jobq_dispatch_latency_seconds": ("histogram", ("queue",)),
    "jobq_run_seconds": ("histogram", ("queue", "outcome")),
    "jobq_recovery_seconds": ("histogram", ()),
    "jobq_checkpoints_total": ("counter", ("queue",)),
    "jobq_work_lost_seconds": ("histogram", ("reason",)),
    "jobq_jobs": ("gauge", ("queue", "state")),
    "jobq_queue_depth": ("gauge", ("queue",)),
    "jobq_oldest_waiting_seconds": ("gauge", ("queue",)),
    "jobq_running_attempts": ("gauge", ("queue",)),
    "jobq_dead_letters": ("gauge", ()),
    "jobq_leader": ("gauge", ()),
    "jobq_nats_connected": ("gauge", ()),
    "jobq_build_info": ("gauge", ("version", "contract", "python")),
    "jobq_node_ready": ("gauge", ("node",)),
    "jobq_node_pods": ("gauge", ("node",)),
}
"""Every ``jobq_`` metric: name -> (type, labels). Besides these, ``process_*`` (CPU, memory,
open files, start time) from prometheus_client's ProcessCollector."""

EVERY_REPLICA = frozenset(
    {
        "jobq_leader",
        "jobq_nats_connected",
        "jobq_build_info",
        "jobq_reconciles_total",
        "jobq_reconcile_errors_total",
    }
)
"""The ``jobq_`` metrics every dispatcher exports, leader or standby (with ``process_*``): they
describe the process. Every other ``jobq_`` metric describes the jobs, queues and nodes, and only
the leader exports it, so a sum over replicas counts each job once."""


def leader_only(family: str) -> bool:
    """Whether a metric family (named as prometheus_client names it: counters without
    ``_total``) is exported by the leader alone; ``process_*`` and anything not ours is not."""
    name = family if family in METRICS else f"{family}_total"
    return name in METRICS and name not in EVERY_REPLICA
