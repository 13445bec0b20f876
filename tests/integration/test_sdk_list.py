"""JobqClient.list reads which records exist from the stream's own subject counts: every record,
whatever the dispatcher is writing at the same moment, and nothing before the first job."""

from __future__ import annotations

import asyncio

from broker import contract, store
from broker.embedded.natsserver import NatsServer
from submitter.client import JobqClient


async def test_list_sees_every_record_while_records_are_rewritten(nats_server: NatsServer) -> None:
    async with JobqClient(nats_server.url) as client:
        assert await client.list() == []  # no bucket yet
        st = await store.Store.open(client.nc)
        now = contract.utcnow()
        revisions = {}
        for n in range(200):
            record = contract.JobRecord(spec=contract.JobSpec(id=f"j{n:03}", task="demo.sleep"),
                                        submitted_at=now, updated_at=now)
            revisions[record.spec.id] = (record, await st.create(record))
        await st.jobs.delete("j000")  # a deleted record has a marker, not a record

        done = asyncio.Event()

        async def rewrite() -> None:  # as the dispatcher does while jobs run and end
            while not done.is_set():
                for job_id, (record, revision) in list(revisions.items())[1:]:
                    revisions[job_id] = (record, await st.update(record, revision=revision or 0))

        writer = asyncio.create_task(rewrite())
        try:
            for _ in range(5):
                listed = await client.list()
                assert sorted(r.spec.id for r in listed) == [f"j{n:03}" for n in range(1, 200)]
        finally:
            # Stopped by a flag, not cancel(): a cancel that lands as a nats-py request completes
            # can be swallowed (asyncio.wait_for, Python 3.11), and the writer would go on.
            done.set()
            await writer
