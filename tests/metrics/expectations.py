"""What each Grafana query and each rule must return, stated from evidence the metrics do not give.

``Evidence`` is gathered by tests/metrics/test_recorded_rules.py from the job records, dead
letters and leader lease as stored in NATS, and from what the test itself did (jobs submitted,
node killed, dispatchers started). ``CHECKS`` maps every query of the board (``$queue`` = All)
and every recording rule to the ``promql_expr_test`` that compares it with that evidence;
test_rules_files.py fails when a query or rule has no entry here (a new panel cannot escape).

Rates are checked as ``round(300 * rate(x[5m]))``: the recorded series start at 0 within the
window and the window ends at the last sample, so Prometheus does not extrapolate and 300 x the
rate is exactly the increase: a count of jobs. Quantiles are rounded to 1 ms and compared with
Prometheus's own interpolation over buckets filled from the records' timestamps.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

from broker.metrics import catalogue
from tests.metrics import promql

Labels = dict[str, str]
Samples = list[tuple[Labels, float]]


@dataclasses.dataclass
class Evidence:
    queue: str
    submitted: int
    """Jobs the test submitted (every publish acked)."""
    phases: collections.Counter[str]
    """Job records by phase, as stored in KV."""
    outcomes: collections.Counter[str]
    retries: collections.Counter[str]
    """Sum of the records' ``retries`` by reason."""
    attempts: int
    dead_letters: int
    """Messages in the dead-letter stream, read by the SDK."""
    waits: list[float]
    """Per job that ran: submitted_at -> its first attempt's started_at (records)."""
    dispatches: list[float]
    """Per job that got a pod: submitted_at -> its first attempt's created_at (records)."""
    runs: dict[str, list[float]]
    """Per final attempt state: started_at -> finished_at (records)."""
    recoveries: int
    """Attempts lost with their node and replaced (none in this run: the node died idle)."""
    nodes: list[str]
    killed_node: str
    leader: str
    """The instance whose process holds the lease (KV ``jobq_leader``), all run long."""
    instances: list[str]
    unstarted_attempts: int
    """Attempts in the records that never started (a refused placement would leave one)."""
    oldest_waiting: float
    """The leader's ``jobq_oldest_waiting_seconds`` at the last instant: checked against the stuck
    job's submitted_at and the scrape's wall time in Python, only its aggregation here."""
    checkpoints: int
    """Checkpoints the attempts wrote, as their records' stamped summaries say."""
    work_lost: dict[str, list[float]]
    """Per reason: the ``work_lost_s`` stamped on the records' disrupted attempts."""
    reconciles: float
    reconcile_errors: float
    """The leader's own counter deltas (no evidence outside the dispatcher counts passes; the
    lease shows the standby never led, so its counters must add nothing)."""
    rss: dict[str, float]
    """Each instance's recorded ``process_resident_memory_bytes``."""


def _one(value: float) -> Samples:
    return [({}, value)]


def _by(label: str, counts: dict[str, float], keys: list[str]) -> Samples:
    return [({label: k}, counts.get(k, 0)) for k in keys]


def _quantile(q: float, observations: list[float], bounds: tuple[float, ...]) -> float:
    value = promql.histogram_quantile(q, promql.bucket_counts(observations, bounds))
    return promql.prom_round(value, 0.001)


RATE = "round(300 * ({}))"
COUNT = "round({})"
QUANTILE = "round({}, 0.001)"
ABSENT = "absent(({}) >= 0)"
"""A quantile or mean of an empty histogram is NaN, which no comparison keeps: ``absent`` is 1."""
SERIES = "count by (instance) ({})"
SAME = "{}"

Check = Callable[[Evidence], tuple[str, Samples]]
Q = promql.ALL_QUEUES
OUTCOMES = [o.value for o in catalogue.OUTCOMES]
REASONS = [r.value for r in catalogue.RETRY_REASONS]
PHASES = ["queued", "running", "succeeded", "dead", "cancelled"]


def _run_quantile(q: float) -> Check:
    def check(e: Evidence) -> tuple[str, Samples]:
        return QUANTILE, [
            ({"outcome": k}, _quantile(q, v, catalogue.RUN_BUCKETS)) for k, v in sorted(e.runs.items())
        ]

    return check


def _work_lost_quantile(q: float) -> Check:
    def check(e: Evidence) -> tuple[str, Samples]:
        if not e.work_lost:  # no disrupted attempt: an empty histogram, NaN
            return ABSENT, _one(1)
        buckets = catalogue.WORK_LOST_BUCKETS
        return QUANTILE, [({"reason": k}, _quantile(q, v, buckets)) for k, v in sorted(e.work_lost.items())]

    return check


CHECKS: dict[str, Check] = {
    # --- overview -------------------------------------------------------------------------
    "sum(jobq_leader)": lambda e: (SAME, _one(1)),
    "count(jobq_build_info)": lambda e: (SAME, _one(len(e.instances))),
    "min(jobq_nats_connected)": lambda e: (SAME, _one(1)),
    f'sum(jobq_queue_depth{{queue=~"{Q}"}})': lambda e: (SAME, _one(e.phases["queued"])),
    f'max(jobq_oldest_waiting_seconds{{queue=~"{Q}"}})': lambda e: (
        COUNT,
        _one(promql.prom_round(e.oldest_waiting)),
    ),
    f'sum(jobq_running_attempts{{queue=~"{Q}"}})': lambda e: (SAME, _one(e.phases["running"])),
    "sum(jobq_dead_letters)": lambda e: (SAME, _one(e.dead_letters)),
    "count(jobq_node_ready == 0) or vector(0)": lambda e: (SAME, _one(1)),
    # --- throughput and retries -----------------------------------------------------------
    f'sum(rate(jobq_jobs_submitted_total{{queue=~"{Q}"}}[5m]))': lambda e: (RATE, _one(e.submitted)),
    f'sum by (outcome) (rate(jobq_jobs_finished_total{{queue=~"{Q}"}}[5m]))': lambda e: (
        RATE,
        _by("outcome", dict(e.outcomes), OUTCOMES),
    ),
    f'sum by (reason) (rate(jobq_retries_total{{queue=~"{Q}"}}[5m]))': lambda e: (
        RATE,
        _by("reason", dict(e.retries), REASONS),
    ),
    f'sum by (queue) (jobq_queue_depth{{queue=~"{Q}"}})': lambda e: (
        SAME,
        [({"queue": e.queue}, e.phases["queued"])],
    ),
    f'max by (queue) (jobq_oldest_waiting_seconds{{queue=~"{Q}"}})': lambda e: (
        COUNT,
        [({"queue": e.queue}, promql.prom_round(e.oldest_waiting))],
    ),
    f'sum by (state) (jobq_jobs{{queue=~"{Q}"}})': lambda e: (
        SAME,
        _by("state", dict(e.phases), PHASES),
    ),
    f'sum(rate(jobq_attempts_total{{queue=~"{Q}"}}[5m]))': lambda e: (RATE, _one(e.attempts)),
    # Every job of this run is kept (7 days' retention): none expired. The count of a real expiry
    # against what NATS deleted is checked in tests/integration/test_retention.py.
    f'sum(rate(jobq_jobs_expired_total{{queue=~"{Q}"}}[5m]))': lambda e: (
        RATE,
        _one(e.submitted - sum(e.phases.values())),  # submitted, and no record left in NATS
    ),
    # Backend refusals to place a pod: every attempt in the records started, and the job no node
    # fits was never given an attempt (decide() keeps it waiting), so nothing was refused.
    f'sum(rate(jobq_unschedulable_total{{queue=~"{Q}"}}[5m]))': lambda e: (RATE, _one(e.unstarted_attempts)),
    # --- latency --------------------------------------------------------------------------
    **{
        f'histogram_quantile({q}, sum by (le) (rate(jobq_{name}_bucket{{queue=~"{Q}"}}[5m])))': (
            lambda e, q=q, attr=attr, buckets=buckets: (  # type: ignore[misc]
                QUANTILE,
                _one(_quantile(q, getattr(e, attr), buckets)),
            )
        )
        for q in (0.5, 0.95)
        for name, attr, buckets in (
            ("wait_seconds", "waits", catalogue.LATENCY_BUCKETS),
            ("dispatch_latency_seconds", "dispatches", catalogue.LATENCY_BUCKETS),
        )
    },
    f'histogram_quantile(0.5, sum by (le, outcome) (rate(jobq_run_seconds_bucket{{queue=~"{Q}"}}[5m])))': (
        _run_quantile(0.5)
    ),
    f'histogram_quantile(0.95, sum by (le, outcome) (rate(jobq_run_seconds_bucket{{queue=~"{Q}"}}[5m])))': (
        _run_quantile(0.95)
    ),
    # --- nodes ----------------------------------------------------------------------------
    "sum by (node) (increase(jobq_node_failures_total[15m]))": lambda e: (
        COUNT,
        [({"node": n}, 1 if n == e.killed_node else 0) for n in e.nodes],
    ),
    "histogram_quantile(0.5, sum by (le) (rate(jobq_recovery_seconds_bucket[15m])))": lambda e: (
        ABSENT,
        _one(1 if e.recoveries == 0 else 0),
    ),
    "histogram_quantile(0.95, sum by (le) (rate(jobq_recovery_seconds_bucket[15m])))": lambda e: (
        ABSENT,
        _one(1 if e.recoveries == 0 else 0),
    ),
    "sum(rate(jobq_recovery_seconds_sum[15m])) / sum(rate(jobq_recovery_seconds_count[15m]))": lambda e: (
        ABSENT,
        _one(1 if e.recoveries == 0 else 0),
    ),
    "max by (node) (jobq_node_ready)": lambda e: (
        SAME,
        [({"node": n}, 0 if n == e.killed_node else 1) for n in e.nodes],
    ),
    "max by (node) (jobq_node_pods)": lambda e: (SAME, [({"node": n}, 0) for n in e.nodes]),
    # --- checkpoints ----------------------------------------------------------------------
    f'sum(rate(jobq_checkpoints_total{{queue=~"{Q}"}}[5m]))': lambda e: (RATE, _one(e.checkpoints)),
    "histogram_quantile(0.5, sum by (le, reason) (rate(jobq_work_lost_seconds_bucket[15m])))": (
        _work_lost_quantile(0.5)
    ),
    "histogram_quantile(0.95, sum by (le, reason) (rate(jobq_work_lost_seconds_bucket[15m])))": (
        _work_lost_quantile(0.95)
    ),
    # --- dispatcher -----------------------------------------------------------------------
    "sum(rate(jobq_reconciles_total[5m]))": lambda e: (RATE, _one(round(e.reconciles))),
    "sum(rate(jobq_reconcile_errors_total[5m]))": lambda e: (RATE, _one(round(e.reconcile_errors))),
    "rate(process_cpu_seconds_total[5m]) * on (instance, job) jobq_build_info": lambda e: (
        SERIES,
        [({"instance": i}, 1) for i in e.instances],
    ),
    "process_resident_memory_bytes * on (instance, job) jobq_build_info": lambda e: (
        SAME,
        [({"instance": i, "job": "jobq"}, e.rss[i]) for i in e.instances],
    ),
    "max by (instance) (jobq_leader)": lambda e: (
        SAME,
        [({"instance": i}, 1 if i == e.leader else 0) for i in e.instances],
    ),
    # --- recording rules (helm/jobq/rules/jobq-rules.yaml) --------------------------------------
    "jobq:jobs_submitted:rate5m": lambda e: (RATE, [({"queue": e.queue}, e.submitted)]),
    "jobq:jobs_finished:rate5m": lambda e: (
        RATE,
        [({"queue": e.queue, "outcome": o}, e.outcomes.get(o, 0)) for o in OUTCOMES],
    ),
    "jobq:retries:rate5m": lambda e: (
        RATE,
        [({"queue": e.queue, "reason": r}, e.retries.get(r, 0)) for r in REASONS],
    ),
    "jobq:queue_depth:sum": lambda e: (
        SAME,
        [({"__name__": "jobq:queue_depth:sum", "queue": e.queue}, e.phases["queued"])],
    ),
    "jobq:oldest_waiting_seconds:max": lambda e: (
        COUNT,
        [({"queue": e.queue}, promql.prom_round(e.oldest_waiting))],
    ),
    "jobq:leaders:sum": lambda e: (SAME, [({"__name__": "jobq:leaders:sum"}, 1)]),
}


def expr_tests(evidence: Evidence, *, eval_time: str) -> list[dict[str, object]]:
    """One ``promql_expr_test`` per entry of ``CHECKS``."""
    tests: list[dict[str, object]] = []
    for expr, check in CHECKS.items():
        wrapper, samples = check(evidence)
        tests.append(
            {
                "expr": wrapper.format(expr),
                "eval_time": eval_time,
                "exp_samples": [promql.sample(labels, value) for labels, value in samples],
            }
        )
    return tests
