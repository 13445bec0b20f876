"""The embedded nats-server fsyncs every JetStream write unless the operator opts out (issue 12),
as the running server itself reports it in ``/varz`` (``jetstream.config.sync_always``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.embedded.natsserver import NatsServer
from tests.integration.helpers import start_jobq_up

JOBQ = [sys.executable, "-m", "submitter.cli"]


def sync_always(varz: dict[str, Any]) -> bool:
    # nats-server leaves the field out when it is false.
    return bool(varz["jetstream"]["config"].get("sync_always", False))


@pytest.mark.parametrize("opted_out", [False, True], ids=["default-always", "opted-out"])
async def test_embedded_server(tmp_path: Path, opted_out: bool) -> None:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1, monitor_port=-1)
    if opted_out:
        server = NatsServer(store_dir=tmp_path / "nats", port=-1, monitor_port=-1, sync_always=False)
    await server.start()
    try:
        varz = await server.varz()
    finally:
        await server.stop()
    assert sync_always(varz) is not opted_out
    # Opted out is nats-server's own default: an fsync every two minutes.
    assert opted_out is False or varz["jetstream"]["config"]["sync_interval"] == 120 * 10**9


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JOBQ_NATS_SYNC"}
    return {**env, "JOBQ_LOG_FORMAT": "json", **extra}


async def up_varz(data_dir: Path, *flags: str, env: dict[str, str]) -> dict[str, Any]:
    """Start `jobq up` (no nodes), read its nats-server's /varz, stop it with Ctrl-C."""
    process, _, state = await start_jobq_up(data_dir, *flags, nodes=0, env=env)
    try:
        monitors = state["nats_monitor"]
        assert list(monitors) == ["jobq"], monitors
        async with aiohttp.ClientSession() as http, http.get(f"{monitors['jobq']}/varz") as response:
            varz: dict[str, Any] = await response.json()
            return varz
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ([], {}, True),
        (["--nats-sync", "default"], {}, False),
        ([], {"JOBQ_NATS_SYNC": "default"}, False),
        (["--nats-sync", "always"], {"JOBQ_NATS_SYNC": "default"}, True),
    ],
    ids=["default", "flag-opts-out", "env-opts-out", "flag-beats-env"],
)
async def test_jobq_up(tmp_path: Path, flags: list[str], env: dict[str, str], expected: bool) -> None:
    assert sync_always(await up_varz(tmp_path / "jobq", *flags, env=cli_env(**env))) is expected


def test_a_bad_setting_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    out = subprocess.run(
        [*JOBQ, "up", "--data-dir", str(tmp_path / "jobq")],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(JOBQ_NATS_SYNC="sometimes"),
    )
    assert out.returncode == 1
    assert out.stderr.startswith("Error: ") and "JOBQ_NATS_SYNC='sometimes'" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "jobq" / "nats").exists()
