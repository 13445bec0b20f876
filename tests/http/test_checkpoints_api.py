"""GET /api/jobs and /api/jobs/{id} on a live stack: each attempt's checkpoints and work lost (from
its record), the job's work lost summed, and the running attempt's live checkpoint (from the job's
pointer in KV jobq_checkpoints, only when that attempt owns it). Records and pointers are planted in
NATS as the dispatcher and a pod would write them."""

from __future__ import annotations

import aiohttp

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.http.helpers import eventually, get_json
from tests.integration.checkpoint_plants import (
    AT,
    disrupted_job,
    hostile_pointers,
    plant_pointer,
    pointer,
    put_record,
)
from tests.integration.helpers import wait_running

WHEN = AT.isoformat().replace("+00:00", "Z")


async def test_the_api_shows_checkpoints_work_lost_and_the_live_checkpoint(
    stack: Stack, client: JobqClient
) -> None:
    assert stack.nc is not None
    sleeper = await client.submit(task="demo.sleep", args={"seconds": 120})
    await wait_running(client, [sleeper.id], count=1)
    await put_record(stack.nc, disrupted_job("planted"))
    async with aiohttp.ClientSession(headers=stack.http_headers) as http:
        detail_url, list_url = f"{stack.http_url}api/jobs/{sleeper.id}", f"{stack.http_url}api/jobs"

        # No pointer yet: nothing live, nothing lost.
        job = (await get_json(http, detail_url))["job"]
        assert job["checkpoint"] is None and job["work_lost_s"] is None

        # The running attempt's pointer: the detail and the list's row show it.
        await plant_pointer(stack.nc, sleeper.id, pointer(sleeper.id, 1, resumed_step=None))
        live = {"job_id": sleeper.id, "attempt": 1, "written": 3, "step": 7, "at": WHEN,
                "resumed_step": None, "resumed_from_attempt": None}
        assert (await get_json(http, detail_url))["job"]["checkpoint"] == live
        rows = (await get_json(http, f"{list_url}?state=running"))["jobs"]
        assert [r["checkpoint"] for r in rows if r["id"] == sleeper.id] == [live]

        # Any other value under its key shows nothing, and the API keeps answering.
        for value in hostile_pointers(sleeper.id, 1)[::2]:
            await plant_pointer(stack.nc, sleeper.id, value)
            assert (await get_json(http, detail_url))["job"]["checkpoint"] is None, value[:80]
            rows = (await get_json(http, f"{list_url}?state=running"))["jobs"]
            assert [r["checkpoint"] for r in rows if r["id"] == sleeper.id] == [None], value[:80]

        # An ended job: each attempt's stamped checkpoints and work lost, the sum on the job, and no
        # live checkpoint even though its last attempt's pointer is there.
        await plant_pointer(stack.nc, "planted", pointer("planted", 2, step=99))
        detail = await get_json(http, f"{stack.http_url}api/jobs/planted")
        assert detail["job"]["checkpoint"] is None and detail["job"]["work_lost_s"] == 2.64
        assert [(a["checkpoints"], a["work_lost_s"]) for a in detail["attempts"]] == [
            ({"written": 5, "step": 4, "at": WHEN, "resumed_step": None, "resumed_from_attempt": None}, 2.14),
            ({"written": 5, "step": 9, "at": WHEN, "resumed_step": 4, "resumed_from_attempt": 1}, 0.5),
        ]
        assert detail["record"]["attempts"][1]["checkpoints"]["resumed_from_attempt"] == 1

        async def listed() -> bool:
            rows = (await get_json(http, f"{list_url}?state=dead"))["jobs"]
            found = [(r["work_lost_s"], r["checkpoint"]) for r in rows if r["id"] == "planted"]
            return found == [(2.64, None)]

        await eventually(listed, what="the planted job in the list")  # the index follows the KV watch
    await client.cancel(sleeper.id)
    assert (await client.wait([sleeper.id], timeout=60))[sleeper.id].phase == contract.JobPhase.CANCELLED
