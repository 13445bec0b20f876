"""The Grafana board and the chart's rules, evaluated by promtool on series recorded from two
dispatchers, give what the evidence says: no query counts a job twice.

A real embedded stack with two dispatchers (the chart's default) and three nodes runs a known
workload: jobs that succeed, jobs that fail once then succeed, jobs that fail until they die, and
one job no node fits; then an idle node is SIGKILLed. Both dispatchers' /metrics are scraped at
three instants (before, during, after). The scrapes become promtool input series (one
``instance`` per dispatcher) and every board query and recording rule (tests/metrics/
expectations.py) and every alert is compared with evidence the metrics do not give: the job
records, dead letters and lease as stored in NATS, and what the test did.

The promtool file is written to test-output/metrics/; with ``JOBQ_RECORD_METRICS=1`` it also
replaces tests/metrics/recorded/two-dispatchers.test.yaml, which test_rules_files.py replays.
"""

from __future__ import annotations

import collections
import functools
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest

from broker import contract, metrics
from tests.conftest import running_stack, submitter_client
from tests.http.helpers import Samples, eventually
from tests.metrics import expectations, live, promql

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
"""600 s: a cold run builds promtool (about 5 minutes on 2 cores); the run itself is ~40 s."""

SUCCEED = 4
FLAKY = 2
"""demo.flaky succeeding on attempt 2: one app_error retry each."""
DYING = 2
"""demo.flaky that would succeed only on attempt 10, under the default policy (3 attempts): two
app_error retries each, then dead."""
QUEUE = "default"
Scrape = dict[str, Samples | None]


def workload() -> list[dict[str, object]]:
    jobs: list[dict[str, object]] = [
        {"id": f"ok-{i}", "task": "demo.sleep", "args": {"seconds": 0.5}} for i in range(SUCCEED)
    ]
    jobs += [{"id": f"flaky-{i}", "task": "demo.flaky", "args": {"succeed_on": 2}} for i in range(FLAKY)]
    jobs += [{"id": f"dying-{i}", "task": "demo.flaky", "args": {"succeed_on": 10}} for i in range(DYING)]
    # No node has 64 CPUs: it stays queued, waiting (the oldest waiting job, a refused placement).
    jobs.append({"id": "too-big", "task": "demo.sleep", "resources": {"cpu": 64}})
    return jobs


async def test_two_dispatchers_count_each_job_once(tmp_path: Path, helm: Path, promtool: Path) -> None:
    recording = promql.Recording(instances=[live.instance(0), live.instance(1)])
    async with (
        running_stack(tmp_path, dispatchers=2) as stack,
        submitter_client(stack) as client,
        aiohttp.ClientSession(headers=stack.http_headers) as http,
    ):
        leader = await live.wait_holder(client, stack)
        standby = 1 - leader
        lease_before = await live.lease_holder(client, stack)

        async def leader_says(name: str, want: float, **labels: str) -> bool:
            return live.value(await live.scrape(http, stack, leader), name, **labels) == want

        await eventually(lambda: leader_says("jobq_leader", 1), what="the lease holder to report leading")
        for node in stack.nodes:  # the backend learns of nodes from their first status report
            await eventually(
                functools.partial(leader_says, "jobq_node_ready", 1, node=node), what=f"{node} Ready"
            )
        recording.add(await live.scrape_all(http, stack))  # minute 0: nothing submitted yet

        jobs = workload()
        for job in jobs:
            await client.submit(job)
        recording.add(await live.scrape_all(http, stack))  # minute 1: jobs in flight

        finished = [str(j["id"]) for j in jobs if j["id"] != "too-big"]
        await client.wait(finished, timeout=120)
        await eventually(
            lambda: leader_says("jobq_jobs_finished_total", len(finished)), what="the leader to count them"
        )
        killed = sorted(stack.nodes)[0]
        stack.signal_node(killed, signal.SIGKILL)  # idle: no attempt is lost with it
        await eventually(
            lambda: leader_says("jobq_node_ready", 0, node=killed), timeout=30, what="the node NotReady"
        )
        before = time.time()
        last = await live.scrape_all(http, stack)  # minute 2
        after = time.time()
        recording.add(last)

        records = {r.spec.id: r for r in await client.list()}
        dead_letters = len(await client.dead_letters())
        assert await live.lease_holder(client, stack) == lease_before == leader, "the leader changed"

    # --- what the scrapes show, replica by replica ------------------------------------------------
    for instant in recording.scrapes:
        lead, stand = instant[live.instance(leader)], instant[live.instance(standby)]
        assert lead is not None and stand is not None
        assert live.value(stand, "jobq_leader") == 0 and live.value(lead, "jobq_leader") == 1
        assert live.leader_only_names(stand) == set(), "a standby exports job, queue or node series"
        assert live.value(stand, "process_resident_memory_bytes")
        assert live.value(stand, "jobq_build_info") == 1
    lead_final = last[live.instance(leader)]
    assert lead_final is not None
    exposed = {
        n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        for n in live.families(lead_final)
    }
    assert set(metrics.METRICS) <= exposed, set(metrics.METRICS) - exposed

    # --- the evidence ---------------------------------------------------------------------------
    stuck = records["too-big"]
    assert stuck.phase == contract.JobPhase.QUEUED and not stuck.attempts and stuck.waiting_reason
    oldest = live.value(lead_final, "jobq_oldest_waiting_seconds", queue=QUEUE)
    assert oldest is not None
    waited = (before - stuck.submitted_at.timestamp(), after - stuck.submitted_at.timestamp())
    assert waited[0] - 0.01 <= oldest <= waited[1] + 0.01, (oldest, waited)

    runs: dict[str, list[float]] = collections.defaultdict(list)
    waits, dispatches = [], []
    for record in records.values():
        started = [a for a in record.attempts if a.started_at]
        if started and started[0].started_at:
            waits.append(max(0.0, (started[0].started_at - record.submitted_at).total_seconds()))
        if record.attempts and record.attempts[0].created_at:
            dispatches.append(max(0.0, (record.attempts[0].created_at - record.submitted_at).total_seconds()))
        for a in record.attempts:
            if a.state.is_final and a.started_at and a.finished_at:
                runs[a.state.value].append(max(0.0, (a.finished_at - a.started_at).total_seconds()))
    retries: collections.Counter[str] = collections.Counter()
    for record in records.values():
        retries.update(record.retries)
    phases = collections.Counter(r.phase.value for r in records.values())
    assert phases == {"succeeded": SUCCEED + FLAKY, "dead": DYING, "queued": 1}, phases
    assert retries == {"app_error": FLAKY + 2 * DYING}, retries
    assert set(runs) == {"succeeded", "failed"}

    first, final = recording.scrapes[0], last
    evidence = expectations.Evidence(
        queue=QUEUE,
        submitted=len(jobs),
        phases=phases,
        outcomes=collections.Counter(r.phase.value for r in records.values() if r.phase.is_terminal),
        retries=retries,
        attempts=sum(len(r.attempts) for r in records.values()),
        dead_letters=dead_letters,
        waits=waits,
        dispatches=dispatches,
        runs=dict(runs),
        recoveries=retries["node_lost"],
        nodes=sorted(stack.nodes),
        killed_node=killed,
        leader=live.instance(leader),
        instances=list(recording.instances),
        unstarted_attempts=sum(1 for r in records.values() for a in r.attempts if not a.started_at),
        oldest_waiting=oldest,
        checkpoints=sum(a.checkpoints.written for r in records.values() for a in r.attempts if a.checkpoints),
        work_lost=_work_lost(records.values()),
        reconciles=_delta(first, final, live.instance(leader), "jobq_reconciles_total"),
        reconcile_errors=_delta(first, final, live.instance(leader), "jobq_reconcile_errors_total"),
        rss={i: live.value(final[i], "process_resident_memory_bytes") or 0 for i in recording.instances},
    )

    # --- promtool: every query and rule against the evidence ---------------------------------------
    rules_spec = promql.render_rules(helm, promql.TEST_VALUES)
    rules_file = promql.write_rules(tmp_path / promql.TEST_RULES.name, rules_spec)
    exprs: list[dict[str, object]] = expectations.expr_tests(evidence, eval_time="2m")
    exprs += [
        {
            "expr": f'sum(jobq_jobs{{queue=~"{promql.ALL_QUEUES}"}})',
            "eval_time": "0m",
            "exp_samples": [promql.sample({}, 0)],
        },
    ]
    for minute in (0, 1):
        exprs.append(
            {"expr": "sum(jobq_leader)", "eval_time": f"{minute}m", "exp_samples": [promql.sample({}, 1)]}
        )
    test_file = tmp_path / "two-dispatchers.test.yaml"
    promql.write_test_file(
        test_file,
        recording=recording,
        rule_file=rules_file,
        exprs=exprs,
        alerts=_alerts(rules_spec, evidence),
        comment=(
            "Series of two dispatchers (leader and standby) through a known workload; every board query,\n"
            "recording rule and alert checked against evidence. Recorded by "
            "tests/metrics/test_recorded_rules.py (expected values: tests/metrics/expectations.py)."
        ),
    )
    promql.check_recording(promtool, test_file)


def _work_lost(records: Iterable[contract.JobRecord]) -> dict[str, list[float]]:
    lost: dict[str, list[float]] = collections.defaultdict(list)
    for record in records:
        for a in record.attempts:
            if a.work_lost_s is not None and a.reason is not None:
                lost[a.reason.value].append(a.work_lost_s)
    return dict(lost)


def _delta(first: Scrape, last: Scrape, inst: str, name: str) -> float:
    return (live.value(last[inst], name) or 0) - (live.value(first[inst], name) or 0)


def _alerts(spec: dict[str, object], e: expectations.Evidence) -> list[dict[str, object]]:
    """Each alert at minute 2 (and none at minute 0), with its value from the evidence."""

    def firing(name: str, labels: dict[str, str], value: float) -> dict[str, object]:
        rule = promql.alert_rule(spec, name)
        return {
            "exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": promql.render_annotations(rule, labels, value),
        }

    retries_threshold = float(promql.TEST_VALUES["prometheusRule.retries.threshold"])
    at_2m = {
        "JobqNoLeader": [],
        "JobqJobsDying": [firing("JobqJobsDying", {"queue": e.queue}, e.outcomes["dead"])],
        "JobqRetriesRising": [
            firing("JobqRetriesRising", {"queue": e.queue, "reason": reason}, count)
            for reason, count in sorted(e.retries.items())
            if count > retries_threshold
        ],
        "JobqNodeLost": [firing("JobqNodeLost", {"node": e.killed_node}, 0)],
        "JobqQueueStalled": [firing("JobqQueueStalled", {"queue": e.queue}, e.oldest_waiting)],
    }
    tests: list[dict[str, object]] = [
        {"eval_time": "2m", "alertname": name, "exp_alerts": alerts} for name, alerts in at_2m.items()
    ]
    tests += [{"eval_time": "0m", "alertname": name, "exp_alerts": []} for name in at_2m]
    return tests
