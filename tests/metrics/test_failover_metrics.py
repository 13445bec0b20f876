"""When leadership moves, the job series move with it: the new leader exports them, the old one
(alive again, its counters still in memory) stops, and for the moment nobody leads, JobqNoLeader.

Two dispatchers on the embedded stack. The leader runs two jobs, then is paused (SIGSTOP, like a
long GC pause or a frozen VM) beyond its lease TTL; the standby takes over; the old leader is
resumed and steps down; one more job runs. Both /metrics are scraped at four instants and
replayed through promtool. Who leads is read from the lease in KV, not from the metrics.

Faster than default, and why: the lease TTL is 3 s (tests.conftest.FAST_ENV; default 5 s), so
the takeover comes a few seconds after the pause.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import running_stack, submitter_client
from tests.http.helpers import eventually
from tests.metrics import live, promql

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
"""600 s: a cold run builds promtool (about 5 minutes on 2 cores); the run itself is ~30 s."""


async def test_series_follow_the_leader(tmp_path: Path, helm: Path, promtool: Path) -> None:
    recording = promql.Recording(instances=[live.instance(0), live.instance(1)])
    async with (
        running_stack(tmp_path, dispatchers=2) as stack,
        submitter_client(stack) as client,
        aiohttp.ClientSession(headers=stack.http_headers) as http,
    ):
        old = await live.wait_holder(client, stack)
        new = 1 - old

        async def says(index: int, name: str, want: float, **labels: str) -> bool:
            return live.value(await live.scrape(http, stack, index), name, **labels) == want

        await eventually(functools.partial(says, old, "jobq_leader", 1), what="the leader to report leading")
        before = ["before-0", "before-1"]
        for job_id in before:
            await client.submit({"id": job_id, "task": "demo.sleep", "args": {"seconds": 0.2}})
        await client.wait(before, timeout=60)
        await eventually(functools.partial(says, old, "jobq_jobs_finished_total", 2, outcome="succeeded"))
        recording.add(await live.scrape_all(http, stack))  # minute 0: old leads

        stack.signal_dispatcher(old, signal.SIGSTOP)
        # Minute 1: the standby, then the lease (so it was still the paused leader's when the standby
        # answered: nobody led), then the paused leader, which does not answer.
        standing_by = await live.scrape(http, stack, new)
        assert await live.lease_holder(client, stack) == old, "the standby took over before the scrape"
        paused = await live.scrape(http, stack, old)
        recording.add({live.instance(old): paused, live.instance(new): standing_by})

        assert await live.wait_holder(client, stack, not_index=old) == new
        stack.signal_dispatcher(old, signal.SIGCONT)
        await eventually(
            functools.partial(says, old, "jobq_leader", 0), timeout=20, what="the old one to step down"
        )
        await eventually(functools.partial(says, new, "jobq_leader", 1), what="the new one to lead")
        recording.add(await live.scrape_all(http, stack))  # minute 2: new leads, old stands by

        await client.submit({"id": "after-0", "task": "demo.sleep", "args": {"seconds": 0.2}})
        await client.wait(["after-0"], timeout=60)
        await eventually(functools.partial(says, new, "jobq_jobs_finished_total", 1, outcome="succeeded"))
        recording.add(await live.scrape_all(http, stack))  # minute 3
        records = {r.spec.id: r for r in await client.list()}
        assert await live.lease_holder(client, stack) == new

    old_i, new_i = live.instance(old), live.instance(new)
    exporter = {0: old_i, 1: None, 2: new_i, 3: new_i}
    for minute, instant in enumerate(recording.scrapes):
        for inst, samples in instant.items():
            if minute == 1 and inst == old_i:
                assert samples is None, "a paused dispatcher answered"
                continue
            assert samples is not None
            assert bool(live.leader_only_names(samples)) == (inst == exporter[minute]), (minute, inst)
            assert live.value(samples, "jobq_leader") == (1 if inst == exporter[minute] else 0)
    # The test submitted one job after the takeover: the new leader counted that one, not the
    # old leader's two; the job states come from its own index, so they cover all three.
    assert live.value(recording.scrapes[3][new_i], "jobq_jobs_submitted_total") == 1
    assert live.value(recording.scrapes[3][new_i], "jobq_jobs", state="succeeded") == len(records) == 3

    rules_spec = promql.render_rules(helm, promql.TEST_VALUES)
    rules_file = promql.write_rules(tmp_path / promql.TEST_RULES.name, rules_spec)
    exprs: list[dict[str, object]] = []
    for minute, leaders in enumerate((1, 0, 1, 1)):
        exprs.append(_expr("sum(jobq_leader)", minute, [({}, leaders)]))
        who = exporter[minute]
        exprs.append(
            _expr("count by (instance) (jobq_queue_depth)", minute, [({"instance": who}, 1)] if who else [])
        )
    exprs.append(_expr("max by (instance) (jobq_leader)", 1, [({"instance": new_i}, 0)]))
    exprs.append(
        _expr("max by (instance) (jobq_leader)", 2, [({"instance": old_i}, 0), ({"instance": new_i}, 1)])
    )
    exprs.append(_expr("sum by (instance) (jobq_jobs_submitted_total)", 3, [({"instance": new_i}, 1)]))
    exprs.append(_expr('sum(jobq_jobs{queue=~".*",state="succeeded"})', 3, [({}, len(records))]))
    no_leader = promql.alert_rule(rules_spec, "JobqNoLeader")
    firing = {
        "exp_labels": no_leader["labels"],
        "exp_annotations": promql.render_annotations(no_leader, {}, 0),
    }
    alerts = [
        {"eval_time": f"{m}m", "alertname": "JobqNoLeader", "exp_alerts": [firing] if m == 1 else []}
        for m in range(4)
    ]
    test_file = tmp_path / "failover.test.yaml"
    promql.write_test_file(
        test_file,
        recording=recording,
        rule_file=rules_file,
        exprs=exprs,
        alerts=alerts,
        comment=(
            "Series of two dispatchers while leadership moves (leader paused beyond its lease, standby\n"
            "takes over, old leader resumes and steps down).\n"
            "Recorded by tests/metrics/test_failover_metrics.py."
        ),
    )
    promql.check_recording(promtool, test_file)


def _expr(expr: str, minute: int, samples: list[tuple[dict[str, str], float]]) -> dict[str, object]:
    return {
        "expr": expr,
        "eval_time": f"{minute}m",
        "exp_samples": [promql.sample(labels, value) for labels, value in samples],
    }
