"""/metrics after a real run with a SIGKILLed node: counters and histograms match the records."""

from __future__ import annotations

import collections
import math

import aiohttp
import pytest

from broker import contract, metrics
from broker.embedded.stack import Stack
from broker.metrics import catalogue
from submitter.client import JobqClient
from tests.http.helpers import Samples, eventually, get_json, kill_busiest_node, scrape, value

pytestmark = pytest.mark.slow
JOBS = 8


def _close(actual: float, expected: float, *, slack: float = 1e-3) -> bool:
    return math.isclose(actual, expected, abs_tol=slack)


async def test_metrics_after_node_kill(stack: Stack, client: JobqClient) -> None:
    ids = [f"m-{i}" for i in range(JOBS)]
    for job_id in ids:
        await client.submit({"id": job_id, "task": "demo.sleep", "args": {"seconds": 3}})
    node, killed_at = await kill_busiest_node(stack, client)
    records = await client.wait(ids, timeout=90)
    assert all(r.phase == contract.JobPhase.SUCCEEDED for r in records.values())
    base = stack.http_url

    async with aiohttp.ClientSession(headers=stack.http_headers) as http:
        samples: Samples = {}

        async def settled() -> bool:
            nonlocal samples
            samples, _ = await scrape(http, base)
            return (
                value(samples, "jobq_jobs_finished_total", outcome="succeeded") == JOBS
                and value(samples, "jobq_node_failures_total", node=node) == 1
            )

        await eventually(settled, what="metrics to count every finished job")
        _, types = await scrape(http, base)
        nodes = await get_json(http, f"{base}api/nodes")

    # Every documented metric is exposed with its type, and nothing else under jobq_.
    exposed = {name: kind for name, kind in types.items() if name.startswith("jobq_")}
    documented = {name.removesuffix("_total"): kind for name, (kind, _) in metrics.METRICS.items()}
    assert exposed == documented

    retries: collections.Counter[str] = collections.Counter()
    for record in records.values():
        retries.update(record.retries)
    assert retries["node_lost"] >= 1, "the killed node was running attempts"
    for reason in contract.FailureReason:
        counted = value(samples, "jobq_retries_total", queue="default", reason=reason.value)
        assert counted == retries[reason], reason

    attempts = [a for r in records.values() for a in r.attempts]
    assert value(samples, "jobq_jobs_submitted_total", queue="default") == JOBS
    assert value(samples, "jobq_jobs_finished_total", queue="default", outcome="succeeded") == JOBS
    assert value(samples, "jobq_jobs_finished_total", outcome="dead") == 0
    assert value(samples, "jobq_attempts_total", queue="default") == len(attempts)

    # Run time: one observation per finished attempt that had started.
    for outcome in ("succeeded", "failed"):
        ran = [
            (a.finished_at - a.started_at).total_seconds()
            for a in attempts
            if a.state.value == outcome and a.started_at and a.finished_at
        ]
        assert value(samples, "jobq_run_seconds_count", outcome=outcome) == len(ran), outcome
        assert _close(value(samples, "jobq_run_seconds_sum", outcome=outcome), sum(ran)), outcome
    assert value(samples, "jobq_run_seconds_bucket", outcome="succeeded", le="2.0") == 0  # 3 s sleeps

    # Wait time (submit -> the first attempt that ran; a first attempt can be lost with its node
    # before it was ever seen running) and dispatch latency (submit -> first pod).
    waits = [
        (next(a.started_at for a in r.attempts if a.started_at) - r.submitted_at).total_seconds()
        for r in records.values()
    ]
    assert value(samples, "jobq_wait_seconds_count", queue="default") == JOBS == len(waits)
    assert _close(value(samples, "jobq_wait_seconds_sum", queue="default"), sum(waits))
    assert value(samples, "jobq_dispatch_latency_seconds_count", queue="default") == JOBS
    assert 0 < value(samples, "jobq_dispatch_latency_seconds_sum") <= sum(waits) + 0.5

    # Recovery: node lost (its last heartbeat, <= 1 interval before the kill) -> replacement running.
    recoveries = []
    for record in records.values():
        for i, attempt in enumerate(record.attempts):
            if attempt.reason == contract.FailureReason.NODE_LOST and i + 1 < len(record.attempts):
                started = record.attempts[i + 1].started_at
                assert started is not None
                recoveries.append(started.timestamp() - killed_at)
    assert value(samples, "jobq_recovery_seconds_count") == len(recoveries) == retries["node_lost"]
    total = value(samples, "jobq_recovery_seconds_sum")
    assert sum(recoveries) - 0.2 * len(recoveries) <= total <= sum(recoveries) + 1.5 * len(recoveries)
    # Each observation starts at the node's last heartbeat, which is at most one status interval
    # (1 s) before the kill: it is never shorter than the same recovery counted from the kill, and
    # at most ~1.2 s longer. (Detection is not a floor: a create the dying node never answered
    # fails after the 2 s request timeout, sooner than the 3 s node timeout.)
    for le in catalogue.RECOVERY_BUCKETS:
        counted = value(samples, "jobq_recovery_seconds_bucket", le=str(float(le)))
        assert sum(r <= le - 1.2 for r in recoveries) <= counted <= sum(r <= le for r in recoveries), le

    # Node metrics: one failure of the killed node; it is NotReady, the others Ready.
    assert value(samples, "jobq_node_failures_total") == 1
    assert value(samples, "jobq_node_ready", node=node) == 0
    assert value(samples, "jobq_node_ready") == len(stack.nodes) - 1

    # State gauges.
    assert value(samples, "jobq_jobs", queue="default", state="succeeded") == JOBS
    assert value(samples, "jobq_queue_depth", queue="default") == 0
    assert value(samples, "jobq_running_attempts", queue="default") == 0
    assert value(samples, "jobq_dead_letters") == 0
    assert value(samples, "jobq_leader") == 1
    assert value(samples, "jobq_nats_connected") == 1
    assert value(samples, "jobq_reconciles_total") > JOBS

    # The API's node-failure report agrees with the records.
    [failure] = nodes["failures"]
    assert failure["node"] == node
    assert failure["affected_jobs"] == failure["recovered_jobs"] == len(recoveries)
    assert _close(failure["recovery_seconds"]["max"], max(recoveries), slack=1.5)
    by_name = {n["name"]: n for n in nodes["nodes"]}
    assert by_name[node]["ready"] is False and by_name[node]["not_ready_since"]
