"""What retention costs (docs/design/retention.md): the sweeper's time and CPU to delete E due jobs
while K other finished jobs are kept, on one real nats-server; and ``JobqClient.list`` of the kept.

The due and kept jobs are finished records written straight into KV (no pods). The sweeper runs
in this process with a stand-in lease, exactly as the leader runs it.

    .venv/bin/python -m bench.retention                       # K in (0, 20000), E in (100, 1000)
    .venv/bin/python -m bench.retention --kept 50000 --due 5000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import tempfile
import time
from pathlib import Path

import structlog

from broker import contract, natsutil, store
from broker.dispatcher.expiry import Sweeper
from broker.dispatcher.index import JobIndex
from broker.dispatcher.retention import RetentionPolicy
from broker.embedded.natsserver import NatsServer
from submitter.client import JobqClient


async def one(kept: int, due: int, *, list_too: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "nats", port=-1)
        await server.start()
        try:
            nc = await natsutil.connect(server.url, name="bench-retention")
            st = await store.Store.open(nc)
            ended = contract.utcnow() - dt.timedelta(minutes=5)
            writing = asyncio.Semaphore(64)

            async def make(job_id: str, retention_s: float | None) -> None:
                spec = contract.JobSpec(id=job_id, task="demo.sleep", retention_s=retention_s)
                record = contract.JobRecord(
                    spec=spec,
                    phase=contract.JobPhase.SUCCEEDED,
                    submitted_at=ended,
                    updated_at=ended,
                    finished_at=ended,
                )
                async with writing:
                    await st.create(record)

            await asyncio.gather(
                *(make(f"k{n:06}", None) for n in range(kept)), *(make(f"d{n:06}", 60) for n in range(due))
            )
            index, ready = JobIndex(), asyncio.Event()
            watch = asyncio.create_task(st.watch_jobs(index.put, ready, index.remove))
            await ready.wait()
            while len(index) < kept + due:
                await asyncio.sleep(0.05)
            sweeper = Sweeper(
                st,
                index=index,
                policy=RetentionPolicy(),
                fence=lambda _epoch=0: 1,
                idempotency_window_s=7 * 86400,
            )
            stop = asyncio.Event()
            cpu, wall = time.process_time(), time.perf_counter()
            task = asyncio.create_task(sweeper.run(stop))
            while sweeper.expired < due:
                await asyncio.sleep(0.005)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            idle = time.perf_counter()
            sweeper.heap.take_due(contract.utcnow(), most=64)
            sweeper.heap.earliest()
            idle_us = (time.perf_counter() - idle) * 1e6
            stop.set()
            await task
            line = (
                f"kept={kept:6d} due={due:5d}: swept in {wall:6.2f} s, sweeper CPU {cpu:5.2f} s, "
                f"idle heap check {idle_us:5.1f} us"
            )
            if list_too:
                async with JobqClient(server.url) as client:
                    started = time.perf_counter()
                    listed = await client.list()
                    line += f"; JobqClient.list of {len(listed)} kept: {time.perf_counter() - started:.2f} s"
            print(line, flush=True)
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await nc.close()
        finally:
            await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=int, nargs="+", default=[0, 20_000])
    parser.add_argument("--due", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no job lines
    for kept in args.kept:
        for due in args.due:
            await one(kept, due, list_too=due == args.due[-1])


if __name__ == "__main__":
    asyncio.run(main())
