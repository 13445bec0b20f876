"""The real `jobq up` and `jobq demo` commands, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker import contract
from submitter import clibase
from submitter.client import JobqClient
from tests.integration.helpers import start_jobq_up

JOBQ = [sys.executable, "-m", "submitter.cli"]


def env() -> dict[str, str]:
    return {**os.environ, "JOBQ_LOG_FORMAT": "json", "JOBQ_NODE_TIMEOUT_S": "3"}


async def start_up(data_dir: Path) -> tuple[asyncio.subprocess.Process, str, dict[str, Any]]:
    """``jobq up``: its process, its NATS URL and the SDK's options for it (its CA: TLS is on)."""
    process, banner, state = await start_jobq_up(data_dir, nodes=2, env=env())
    assert state["http_url"] in banner and "dashboard" in banner
    assert state["nats_url"].startswith("tls://") and state["nats_ca"], "TLS is on by default"
    return process, state["nats_url"], {"tls": contract.client_tls_context(ca_file=state["nats_ca"])}


@pytest.mark.timeout(240)
async def test_ctrl_c_with_jobs_in_flight_then_up_again_finishes_them(tmp_path: Path) -> None:
    process, url, options = await start_up(tmp_path / "jobq")
    # The SDK user's way to find the stack's submitter credentials: stack.json in the data dir.
    auth = clibase.resolve_nats_auth(url, tmp_path / "jobq")
    assert auth is not None and auth["user"] == "jobq-submitter"
    async with JobqClient(url, auth=auth, nats_options=options) as client:
        ids = [(await client.submit(task="demo.sleep", args={"seconds": 2})).id for _ in range(6)]
        await asyncio.sleep(1.5)
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 60) == 0
    assert not (tmp_path / "jobq" / "stack.json").exists()

    process, url, options = await start_up(tmp_path / "jobq")
    try:
        async with JobqClient(url, auth=clibase.resolve_nats_auth(url, tmp_path / "jobq"),
                              nats_options=options) as client:
            records = await client.wait(ids, timeout=90)
        assert {r.phase for r in records.values()} == {contract.JobPhase.SUCCEEDED}
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 60)


@pytest.mark.timeout(300)
async def test_demo_with_a_node_kill_reports_every_job(tmp_path: Path) -> None:
    out = await asyncio.to_thread(
        subprocess.run,
        [*JOBQ, "demo", "--jobs", "8", "--kill-node", "--json", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["submitted"] == summary["succeeded"] == 8
    assert summary["lost"] == summary["duplicate_results"] == summary["dead"] == 0
    assert {"failed", "retries", "wall_seconds", "attempts"} <= set(summary)
    assert "node kill" in out.stderr or summary.get("killed_node") is None
    # The long training job ran on the killed node: its record says from which epoch the
    # replacement resumed (the one its lost attempt had saved) and how much work was lost.
    train = summary["training"]
    assert summary["killed_node"] == train["lost_node"] == train["nodes"][0] != train["resumed_on"], train
    assert train["phase"] == "succeeded" and train["saved_epoch"] is not None
    assert train["resumed_epoch"] == train["saved_epoch"] >= 5, train
    detection_s = 3.0  # the demo's stack runs the default JOBQ_NODE_TIMEOUT_S
    assert train["work_lost_s"] is not None and 0 <= train["work_lost_s"] <= train["interval_s"] + detection_s
    # Measured from the demo's own kill time: it kills 0.6 of an epoch after a checkpoint; the
    # dispatcher's figure (from the last sign of life) is at most that, short by < 1 heartbeat.
    assert 0 < train["lost_s"] <= train["interval_s"] + detection_s, train
    assert train["lost_s"] - 1.5 <= train["work_lost_s"] <= train["lost_s"] + 0.1, train
    assert f"resumed from epoch {train['resumed_epoch']} on {train['resumed_on']}" in out.stdout + out.stderr
