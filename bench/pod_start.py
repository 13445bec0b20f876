"""Pod start on one embedded node: forked by the fork server vs a plain subprocess (issue 14).

One run, both ways, on the same machine and the same nats-server: ``--pods`` task-runner pods
(``python -m workers.runner``, started as the node agent starts them: ``fork_client.start_pod``
with and without a ready fork server), ``--concurrency`` at a time, each running a task that
ends the attempt at once (exit 9, no result written). Two tasks:

- ``runner``: ``demo.exit`` — the runner alone (interpreter, its modules, the NATS connection);
- ``sklearn``: ``bench.pod_start:sklearn_ready`` — also imports the scikit-learn modules the demo's
  tasks use, as each demo pod does.

Printed per task and way: pods per second (all pods started and ended, ``pods / wall time``)
and the start latency, p50/max: spawn → the runner's ``task_started`` log line (connected to NATS,
task resolved: the runner is ready). Then the ratios, forked / plain.

    .venv/bin/python -m bench.pod_start                  # ~1 min
    .venv/bin/python -m bench.pod_start --pods 40 --concurrency 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from broker import contract
from broker.embedded.natsserver import NatsServer
from workers import fork_client, tasks

TASKS = {"runner": "demo.exit", "sklearn": "bench.pod_start:sklearn_ready"}


def sklearn_ready(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Import what the demo's scikit-learn tasks import, then end the attempt (exit 9)."""
    import numpy  # noqa: F401
    import sklearn.ensemble
    import sklearn.linear_model
    import sklearn.model_selection
    import sklearn.pipeline
    import sklearn.preprocessing  # noqa: F401

    raise tasks.TaskExit(9, "bench: ready")


def _env(nats_url: str, task: str, n: int) -> dict[str, str]:
    job_id = f"bench-{uuid.uuid4().hex[:8]}-{n}"
    return {
        **os.environ,
        contract.ENV_JOB_ID: job_id,
        contract.ENV_ATTEMPT: "1",
        contract.ENV_TASK: task,
        contract.ENV_ARGS: json.dumps({"code": 9} if task == "demo.exit" else {}),
        contract.ENV_NATS_URL: nats_url,
        contract.ENV_NODE: "bench",
        contract.ENV_POD: contract.pod_name(job_id, 1),
        contract.ENV_POD_UID: str(uuid.uuid4()),
    }


def _fresh_dir(path: Path) -> None:
    path.mkdir(parents=True)


def _ready_at(log: Path) -> dt.datetime | None:
    for line in log.read_text().splitlines():
        if '"task_started"' in line:
            return dt.datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00"))
    return None


async def _one(
    forks: fork_client.ForkServer | None, *, nats_url: str, task: str, n: int, logs: Path
) -> float:
    """Start one pod, wait for it; seconds from spawn to ready."""
    log = logs / f"pod-{n}.log"
    began = dt.datetime.now(dt.UTC)
    process, _ = await fork_client.start_pod(
        [sys.executable, "-m", "workers.runner"],
        forks=forks,
        python=sys.executable,
        env=_env(nats_url, task, n),
        log_path=log,
    )
    code = await process.wait()
    ready = _ready_at(log)
    if code != 9 or ready is None:
        raise RuntimeError(f"pod {n} exited {code} without being ready: {log.read_text()[-2000:]}")
    return (ready - began).total_seconds()


async def _run(
    forks: fork_client.ForkServer | None, *, nats_url: str, task: str, pods: int, concurrency: int, logs: Path
) -> tuple[float, list[float]]:
    """(pods per second, start latencies) for ``pods`` pods, ``concurrency`` at a time."""
    _fresh_dir(logs)
    gate = asyncio.Semaphore(concurrency)

    async def gated(n: int) -> float:
        async with gate:
            return await _one(forks, nats_url=nats_url, task=task, n=n, logs=logs)

    began = time.monotonic()
    latencies = await asyncio.gather(*(gated(n) for n in range(pods)))
    return pods / (time.monotonic() - began), list(latencies)


async def main(pods: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="jobq-bench-pods-") as tmp:
        work = Path(tmp)
        nats = NatsServer(store_dir=work / "nats", port=-1)
        await nats.start()
        if not fork_client.become_subreaper():
            raise SystemExit("this bench needs Linux (a child subreaper)")
        forks = fork_client.ForkServer(python=sys.executable, log_path=work / "fork-server.log", node="bench")
        stop = asyncio.Event()
        serving = asyncio.create_task(forks.run(stop))
        try:
            if not await forks.wait_ready(120):
                raise SystemExit(f"the fork server did not start: {work / 'fork-server.log'}")
            print(f"pod start: {pods} pods per way and task, {concurrency} at a time, {os.cpu_count()} CPUs")
            print(f"{'task':<8} {'way':<7} {'pods/s':>8} {'ready p50':>10} {'ready max':>10}")
            ratios = []
            for name, task in TASKS.items():
                rates = {}
                for way, server in (("plain", None), ("forked", forks)):
                    rate, lat = await _run(
                        server,
                        nats_url=nats.url,
                        task=task,
                        pods=pods,
                        concurrency=concurrency,
                        logs=work / f"{name}-{way}",
                    )
                    rates[way] = (rate, statistics.median(lat))
                    print(
                        f"{name:<8} {way:<7} {rate:>8.2f} {statistics.median(lat) * 1000:>8.0f}ms"
                        f" {max(lat) * 1000:>8.0f}ms"
                    )
                ratios.append(
                    (name, rates["forked"][0] / rates["plain"][0], rates["plain"][1] / rates["forked"][1])
                )
            for name, rate_ratio, latency_ratio in ratios:
                print(
                    f"{name}: forked/plain pods/s = {rate_ratio:.1f}x; "
                    f"start latency plain/forked = {latency_ratio:.1f}x"
                )
        finally:
            stop.set()
            await serving
            await nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=24, help="pods per way and task")
    parser.add_argument("--concurrency", type=int, default=4, help="pods running at once")
    options = parser.parse_args()
    asyncio.run(main(options.pods, options.concurrency))
