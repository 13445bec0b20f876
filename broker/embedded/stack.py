"""The embedded stack: nats-server, dispatcher(s) and node agents as separate OS processes.

``jobq up`` and ``jobq demo`` run one of these. Every process logs to ``<data_dir>/logs/`` and
dies with the supervisor (parent-death signal), and a node agent killed with SIGKILL takes its
pods with it, as a machine would. ``<data_dir>/stack.json`` tells other commands (``jobq
submit``, chaos actions) where everything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker import contract, natsutil
from broker.embedded.natsserver import NatsServer
from workers import pod_runtime

STATE_FILE = "stack.json"
Progress = Callable[[str], None]


class StackError(RuntimeError):
    """The stack could not start; the message names the part and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True, slots=True)
class StackConfig:
    data_dir: Path = Path(".jobq")
    """NATS store, logs and stack.json live here."""
    nodes: int = 3
    node_cpu: float = 2.0
    node_memory: str = "4Gi"
    nats_url: str | None = None
    """Use this NATS instead of starting one."""
    nats_port: int = 4222
    """Port of the NATS server we start; -1 picks a free one."""
    http_port: int = 8222
    """Dashboard/API port of the first dispatcher; 0 picks a free one."""
    dispatchers: int = 1
    log_format: str = "json"
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Extra JOBQ_* settings for the dispatchers and nodes (e.g. JOBQ_NODE_TIMEOUT_S)."""
    node_heartbeat_s: float = 1.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "submitter.cli", *args]


class Stack:
    def __init__(self, config: StackConfig, *, progress: Progress | None = None) -> None:
        self.config = config
        self.progress = progress or (lambda _msg: None)
        self.nats: NatsServer | None = None
        self.nats_url = config.nats_url or ""
        self.nodes: dict[str, asyncio.subprocess.Process] = {}
        self.dispatchers: dict[int, asyncio.subprocess.Process] = {}
        self.http_ports: dict[int, int] = {}
        self.nc: NATS | None = None
        self._node_seen: dict[str, float] = {}
        self._node_sub: object | None = None

    @property
    def logs(self) -> Path:
        return self.config.data_dir / "logs"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_ports.get(0, self.config.http_port)}/"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.config.env, "JOBQ_NATS_URL": self.nats_url,
               "JOBQ_LOG_FORMAT": self.config.log_format}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.nats_url:
            self.progress("starting nats-server (JetStream)")
            self.nats = NatsServer(store_dir=self.config.data_dir / "nats", port=self.config.nats_port)
            try:
                self.nats_url = await self.nats.start()
            except Exception as exc:
                raise StackError(f"nats-server failed to start: {exc}") from exc
        self.nc = await natsutil.connect(self.nats_url, name="jobq-stack")
        self._node_sub = await self.nc.subscribe(contract.NODE_STATUS_WILDCARD, cb=self._on_node)
        self.progress(f"nats at {self.nats_url}; starting {self.config.dispatchers} dispatcher(s) "
                      f"and {self.config.nodes} node(s)")
        for i in range(self.config.dispatchers):
            await self.start_dispatcher(i)
        for n in range(1, self.config.nodes + 1):
            await self.start_node(f"node-{n}")
        await self.wait_ready()
        self.write_state()

    async def _on_node(self, msg: Msg) -> None:
        self._node_seen[msg.subject.split(".")[2]] = time.monotonic()

    async def start_dispatcher(self, index: int) -> None:
        port = self.http_ports.get(index)
        if port is None:
            port = self.config.http_port if index == 0 and self.config.http_port else free_port()
            self.http_ports[index] = port
        env = {**self._env(), "JOBQ_HTTP_PORT": str(port)}
        self.dispatchers[index] = await pod_runtime.spawn(
            _cli("dispatcher"), env=env, log_path=self.logs / f"dispatcher-{index}.log")

    async def start_node(self, name: str) -> None:
        self.nodes[name] = await pod_runtime.spawn(
            _cli("node-agent", "--name", name, "--cpu", str(self.config.node_cpu),
                 "--memory", self.config.node_memory, "--interval", str(self.config.node_heartbeat_s),
                 "--work-dir", str(self.config.data_dir / "nodes")),
            env=self._env(), log_path=self.logs / f"{name}.log")
        self.write_state()

    def signal_node(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a node agent (SIGKILL = the machine dies; its pods die with it)."""
        os.kill(self.nodes[name].pid, sig)

    def signal_dispatcher(self, index: int, sig: signal.Signals = signal.SIGKILL) -> None:
        os.kill(self.dispatchers[index].pid, sig)

    async def wait_ready(self, *, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        self.progress("waiting for the dispatcher and the nodes to report")
        async with aiohttp.ClientSession() as http:
            while True:
                self._check_alive()
                ready = await self._dispatcher_ready(http)
                alive = [n for n, t in self._node_seen.items() if time.monotonic() - t < 3]
                if ready and len(alive) >= len(self.nodes):
                    return
                if time.monotonic() > deadline:
                    raise StackError(f"stack not ready after {timeout_s}s (dispatcher ready: {ready}, "
                                     f"nodes reporting: {sorted(alive)}); see logs in {self.logs}")
                await asyncio.sleep(0.1)

    async def _dispatcher_ready(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self.http_url}readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _check_alive(self) -> None:
        for index, process in self.dispatchers.items():
            if process.returncode is not None:
                log = self.logs / f"dispatcher-{index}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise StackError(f"dispatcher {index} exited with {process.returncode}; "
                                 f"last log lines from {log}:\n{tail}")

    def write_state(self) -> None:
        state = {"nats_url": self.nats_url, "http_url": self.http_url, "pid": os.getpid(),
                 "nodes": {name: p.pid for name, p in self.nodes.items()},
                 "dispatchers": {str(i): p.pid for i, p in self.dispatchers.items()},
                 "http_ports": {str(i): port for i, port in self.http_ports.items()},
                 "nats_pid": self.nats.process.pid if self.nats and self.nats.process else None,
                 "data_dir": str(self.config.data_dir.resolve())}
        path = self.config.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    async def stop(self) -> None:
        """Graceful: dispatchers first (they stop acting), then nodes, then NATS."""
        for process in self.dispatchers.values():
            await pod_runtime.terminate(process, grace_s=10)
        await asyncio.gather(*(pod_runtime.terminate(p, grace_s=5) for p in self.nodes.values()))
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
        if self.nats is not None:
            await self.nats.stop()
        with contextlib.suppress(OSError):
            (self.config.data_dir / STATE_FILE).unlink()


def read_state(data_dir: Path) -> dict[str, object] | None:
    """The running stack's stack.json, if one is running from ``data_dir``."""
    path = data_dir / STATE_FILE
    try:
        state: dict[str, object] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return state
