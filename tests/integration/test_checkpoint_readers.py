"""The checkpoint readers on a real nats-server, judged on records and pointers planted in NATS:
the SDK (async and sync) and `jobq status` (table, json, yaml) show each attempt's checkpoints and
work lost from its record, and the running attempt's live checkpoint from the job's pointer only
when that attempt owns it; any other value under the key shows nothing and breaks nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from broker.embedded.natsserver import NatsServer
from broker.readmodel import checkpoints
from submitter.client import JobHandle, JobNotFound, JobqClient
from submitter.sync_client import SyncJobHandle, SyncJobqClient
from tests.integration.checkpoint_plants import (
    AT,
    disrupted_job,
    hostile_pointers,
    plant_pointer,
    pointer,
    put_record,
    running_job,
)

yaml = pytest.importorskip("yaml")  # only to read what `-o yaml` wrote
JOBQ = [sys.executable, "-m", "submitter.cli"]


async def jobq_status(url: str, job_id: str, *options: str) -> str:
    env = {**os.environ, "JOBQ_NATS_URL": url}  # a bare server: no users, no TLS
    done = await asyncio.to_thread(
        subprocess.run, [*JOBQ, "status", job_id, *options], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def local(at: Any) -> str:
    return str(at.astimezone().strftime("%H:%M:%S"))


async def test_a_running_attempts_live_checkpoint_and_its_predecessors_work_lost(
    nats_server: NatsServer, nc: NATS
) -> None:
    await put_record(nc, running_job("train", attempts=2))
    async with JobqClient(nats_server.url) as client:
        status = await client.status("train")
        assert status is not None and status.checkpoint is None  # no pointer yet
        assert await client.checkpoint("train") is None

        await plant_pointer(nc, "train", pointer("train", 2))
        live = await client.checkpoint("train")
        assert live is not None
        assert (live.job_id, live.attempt, live.written, live.step, live.at) == ("train", 2, 3, 7, AT)
        assert (live.resumed_step, live.resumed_from_attempt) == (4, 1)
        status = await client.status("train")
        assert status is not None and status.checkpoint == live
        assert await JobHandle(client, "train").checkpoint() == live
        with pytest.raises(JobNotFound):
            await client.checkpoint("no-such-job")

    with SyncJobqClient(nats_server.url) as sync:
        assert sync.checkpoint("train") == live
        assert SyncJobHandle(sync, "train").checkpoint() == live
        got = sync.status("train")
        assert got is not None and got.checkpoint == live

    shown = (await jobq_status(nats_server.url, "train")).splitlines()
    assert shown[0] == "train: running"
    assert shown[1] == f"  checkpoint: step 7 at {local(AT)} (resumed from step 4 of attempt 1)", shown
    one = shown.index(next(line for line in shown if line.startswith("  attempt 1: failed")))
    assert shown[one + 1:one + 3] == [f"    checkpoint: step 4 at {local(AT)}", "    work lost: 1.0 s"], shown
    assert shown[one + 3].startswith("  attempt 2: running") and len(shown) == one + 4, shown

    whole = json.loads(await jobq_status(nats_server.url, "train", "-o", "json"))
    assert whole["checkpoint"] == live.model_dump(mode="json")
    assert whole["attempts"][0]["checkpoints"] == {"written": 1, "step": 4, "at": "2026-12-02T12:00:03Z",
                                                   "resumed_step": None, "resumed_from_attempt": None}
    assert whole["attempts"][0]["work_lost_s"] == 1.0 and whole["attempts"][1]["work_lost_s"] is None
    assert yaml.safe_load(await jobq_status(nats_server.url, "train", "-o", "yaml")) == whole


async def test_an_ended_jobs_attempts_show_their_stamped_checkpoints_not_the_pointer(
    nats_server: NatsServer, nc: NATS
) -> None:
    record = disrupted_job("lost")
    await put_record(nc, record)
    await plant_pointer(nc, "lost", pointer("lost", 2, step=99))  # the pointer its last attempt owned
    async with JobqClient(nats_server.url) as client:
        status = await client.status("lost")
        assert status is not None and status.checkpoint is None  # it ended: its record says what it did
        assert status.record.attempts[1].checkpoints == record.attempts[1].checkpoints
        assert checkpoints.work_lost(status.record) == pytest.approx(2.64)
    shown = await jobq_status(nats_server.url, "lost")
    assert "\n  checkpoint:" not in shown and "step 99" not in shown, shown
    assert f"    checkpoint: step 4 at {local(AT)}\n    work lost: 2.1 s\n" in shown, shown
    second = f"    checkpoint: step 9 at {local(AT)} (resumed from step 4 of attempt 1)\n    work lost: 0.5 s"
    assert second in shown, shown
    whole = json.loads(await jobq_status(nats_server.url, "lost", "--json"))
    assert whole["checkpoint"] is None
    assert [a["work_lost_s"] for a in whole["attempts"]] == [2.14, 0.5]
    assert whole["attempts"][1]["checkpoints"]["resumed_from_attempt"] == 1


async def test_no_value_but_the_running_attempts_own_pointer_shows(nats_server: NatsServer, nc: NATS) -> None:
    await put_record(nc, running_job("hostile", attempts=2))
    await put_record(nc, running_job("other", attempts=3))
    good = pointer("hostile", 2)
    async with JobqClient(nats_server.url) as client:
        for value in hostile_pointers("hostile", 2):
            await plant_pointer(nc, "hostile", value)
            await plant_pointer(nc, "other", pointer("other", 3))  # the list read goes on for the others
            assert await client.checkpoint("hostile") is None, value[:80]
            status = await client.status("hostile")
            assert status is not None and status.checkpoint is None, value[:80]
            records = [r for r in await client.list() if r.spec.id in ("hostile", "other")]
            assert set(await checkpoints.of_running(client.js, records)) == {"other"}, value[:80]
        # the CLI on a few of them (a subprocess each): no checkpoint line, no crash
        for value in hostile_pointers("hostile", 2)[1::4]:
            await plant_pointer(nc, "hostile", value)
            shown = await jobq_status(nats_server.url, "hostile")
            assert "\n  checkpoint:" not in shown and shown.startswith("hostile: running\n"), value[:80]
            whole = json.loads(await jobq_status(nats_server.url, "hostile", "-o", "json"))
            assert whole["checkpoint"] is None, value[:80]
        # ... and the pointer of its own attempt shows again.
        await plant_pointer(nc, "hostile", good)
        live = await client.checkpoint("hostile")
        assert live is not None and live.step == 7
