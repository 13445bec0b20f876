"""The embedded stack: nats-server, dispatcher(s) and node agents as separate OS processes.

``jobq up`` and ``jobq demo`` run one of these. Every process logs to ``<data_dir>/logs/`` and
dies with the supervisor (parent-death signal), and a node agent killed with SIGKILL takes its
pods with it, as a machine would. ``<data_dir>/stack.json`` tells other commands (``jobq
submit``, chaos actions) where everything is.

NATS is secure by default (unless the stack is given a NATS URL): a user per role and an auth
callout (``stack_auth``; JOBQ_NATS_AUTH=off turns it off), and TLS (below).

The HTTP API is secure by default: unless JOBQ_HTTP_TOKEN (or JOBQ_HTTP_TOKEN_FILE) is given,
the stack keeps a random token in ``<data_dir>/http-token`` (mode 0600, reused by the next
start), hands the dispatchers its path, and prints the dashboard address with the token in
the URL fragment (``#token=``), which browsers never send to the server.

NATS speaks TLS by default (JOBQ_NATS_TLS=off or ``StackConfig.nats_tls=False`` turns it off): a
CA and a server certificate are kept in ``<data_dir>/tls/`` (``nats_tls``), every process the
stack starts gets JOBQ_NATS_CA, and stack.json records the CA (``nats_ca``) for the other commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker import contract, natsutil, settings
from broker.embedded import nats_tls, readiness, stack_auth
from broker.embedded.natsserver import NatsServer, sync_always_from_env
from broker.embedded.stack_auth import NODE, StackAuth, auth_from_env
from broker.embedded.stack_state import CREDENTIAL_ENV, STATE_FILE
from broker.natsauth import callout, permissions
from broker.responder import Responder
from workers import pod_runtime

TOKEN_FILE = "http-token"
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
    nats_servers: int = 1
    """1, or 3 for a NATS cluster (servers jobq-0..2, fixed ports, streams at R3)."""
    nats_sync_always: bool = dataclasses.field(default_factory=sync_always_from_env)
    """fsync every JetStream write (``sync_interval: always``); default from JOBQ_NATS_SYNC."""
    nats_auth: bool = dataclasses.field(default_factory=auth_from_env)
    """A NATS user per role and the auth callout (default from JOBQ_NATS_AUTH); only for a NATS
    the stack starts itself."""
    nats_tls: bool = dataclasses.field(default_factory=nats_tls.enabled_from_env)
    """The nats-server we start requires TLS (generated CA in <data_dir>/tls); default from JOBQ_NATS_TLS."""


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
        self.nats_cluster: list[NatsServer] = []
        """Every nats-server we run (just ``self.nats`` unless nats_servers > 1)."""
        self._control_sub: object | None = None
        self.http_token = ""
        """The HTTP API's bearer token ("" when the API is open: JOBQ_HTTP_TOKEN set empty)."""
        self._token_env: dict[str, str] = {}
        self.auth: StackAuth | None = None
        """The NATS users, when the stack runs its NATS with them (``nats_auth``)."""
        self._callout: Responder | None = None
        self.tls: nats_tls.TlsFiles | None = None
        """The CA and certificate of the nats-server(s) we run, when they require TLS."""

    @property
    def logs(self) -> Path:
        return self.config.data_dir / "logs"

    @property
    def nats_ca(self) -> str:
        """Path of the CA that signed our nats-server's certificate ("" without TLS)."""
        return str(self.tls.ca_cert.resolve()) if self.tls is not None else ""

    def nats_options(self, role: str = permissions.ROLE_OPERATOR) -> dict[str, Any]:
        """nats.connect() options of a client of this stack as ``role`` (operator, submitter,
        dispatcher): its user and password when the stack runs NATS users, ``tls`` when it
        requires TLS."""
        auth = self.auth.options(role) if self.auth is not None else {}
        return {**auth, **nats_tls.client_options(self.tls)}

    @property
    def http_url(self) -> str:
        scheme = "https" if {**os.environ, **self.config.env}.get("JOBQ_HTTP_TLS_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.http_ports.get(0, self.config.http_port)}/"

    @property
    def dashboard_url(self) -> str:
        """The dashboard address with the token in the fragment, which app.js keeps for the tab."""
        return f"{self.http_url}#token={self.http_token}" if self.http_token else self.http_url

    @property
    def http_headers(self) -> dict[str, str]:
        """Headers that authorize a call to the HTTP API."""
        return {"Authorization": f"Bearer {self.http_token}"} if self.http_token else {}

    def _http_token(self) -> None:
        """The token given in the environment, else the data dir's, else a new one saved there."""
        given = {**os.environ, **self.config.env}
        if "JOBQ_HTTP_TOKEN" in given or "JOBQ_HTTP_TOKEN_FILE" in given:
            self.http_token = settings.http_token(given)  # the dispatcher's own reading of them
            return
        path = self.config.data_dir / TOKEN_FILE
        try:
            self.http_token = path.read_text().strip()
        except OSError:
            self.http_token = ""
        if not self.http_token:
            self.http_token = secrets.token_urlsafe(32)
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(self.http_token + "\n")
        self._token_env = {"JOBQ_HTTP_TOKEN_FILE": str(path.resolve())}

    def _env(self, role: str = permissions.ROLE_DISPATCHER, *, node: str = "") -> dict[str, str]:
        env = {**os.environ, **self.config.env, contract.ENV_NATS_URL: self.nats_url,
               contract.ENV_LOG_FORMAT: self.config.log_format}
        if self.auth is not None:  # each process gets its own role's credentials, no others
            env = {k: v for k, v in env.items() if k not in CREDENTIAL_ENV}
            env.update(self.auth.process_env(role, node=node))
        if self.nats_ca:
            env[contract.ENV_NATS_CA] = self.nats_ca
        if len(self.nats_cluster) > 1:
            env.setdefault("JOBQ_NATS_REPLICAS", "3")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._http_token()
        authorization = ""
        if not self.nats_url and self.config.nats_auth:
            self.auth = StackAuth(self.config.data_dir / stack_auth.AUTH_DIR)
            authorization = self.auth.authorization_block()
        if not self.nats_url and self.config.nats_tls:
            self.tls = nats_tls.ensure(self.config.data_dir)
        if not self.nats_url and self.config.nats_servers > 1:
            await self._start_nats_cluster(self.config.nats_servers, authorization)
        elif not self.nats_url:
            self.progress(f"starting nats-server (JetStream, {self._sync_words()})")
            self.nats = NatsServer(store_dir=self.config.data_dir / "nats", port=self.config.nats_port,
                                   monitor_port=-1, sync_always=self.config.nats_sync_always,
                                   tls=self.tls, authorization=authorization)
            self.nats_cluster = [self.nats]
            try:
                self.nats_url = await self.nats.start()
            except Exception as exc:
                raise StackError(f"nats-server failed to start: {exc}") from exc
        self.nc = await natsutil.connect(self.nats_url, name="jobq-stack", nats_options=self.nats_options())
        if self.auth is not None:  # node agents can connect while no dispatcher runs
            self._callout = await callout.server(self.nc, self.auth.callout_keys).start()
        self._node_sub = await self.nc.subscribe(contract.NODE_STATUS_WILDCARD, cb=self._on_node)
        self._control_sub = await self.nc.subscribe(contract.CONTROL_SUBJECT, cb=self._on_control)
        self.progress(f"nats at {self.nats_url}; starting {self.config.dispatchers} dispatcher(s) "
                      f"and {self.config.nodes} node(s)")
        for i in range(self.config.dispatchers):
            await self.start_dispatcher(i)
        for n in range(1, self.config.nodes + 1):
            await self.start_node(f"node-{n}")
        await self.wait_ready()
        self.write_state()
        if self.http_token:
            where = f" (token in {self.config.data_dir / TOKEN_FILE})" if self._token_env else ""
            self.progress(f"dashboard {self.dashboard_url}{where}")
        else:
            self.progress(f"dashboard {self.http_url} (JOBQ_HTTP_TOKEN is empty: the API is open)")

    async def _start_nats_cluster(self, size: int, authorization: str) -> None:
        """``size`` clustered servers on fixed ports, so a restarted member keeps its name, store
        and address and the connect URL (all members) stays valid."""
        self.progress(f"starting a {size}-server nats cluster (JetStream, {self._sync_words()})")
        client_ports = [self.config.nats_port if i == 0 and self.config.nats_port > 0 else free_port()
                        for i in range(size)]
        cluster_ports = [free_port() for _ in range(size)]
        for i in range(size):
            routes = [f"nats://127.0.0.1:{p}" for j, p in enumerate(cluster_ports) if j != i]
            self.nats_cluster.append(NatsServer(
                store_dir=self.config.data_dir / f"nats-{i}", port=client_ports[i], name=f"jobq-{i}",
                cluster=("jobq", cluster_ports[i], routes), monitor_port=-1,
                sync_always=self.config.nats_sync_always, tls=self.tls, authorization=authorization))
        self.nats = self.nats_cluster[0]
        try:
            await asyncio.gather(*(server.start() for server in self.nats_cluster))
        except Exception as exc:
            raise StackError(f"nats cluster failed to start: {exc}") from exc
        scheme = "tls" if self.tls is not None else "nats"
        self.nats_url = ",".join(f"{scheme}://127.0.0.1:{p}" for p in client_ports)

    def _sync_words(self) -> str:
        words = ("fsync every write" if self.config.nats_sync_always
                 else "fsync every 2 min: JOBQ_NATS_SYNC=default")
        words += ", TLS" if self.tls is not None else ", no TLS: JOBQ_NATS_TLS=off"
        return words + (", a user per role" if self.auth is not None else ", no users: JOBQ_NATS_AUTH=off")

    def signal_nats(self, index: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal one nats-server of the cluster (SIGKILL = the broker machine dies)."""
        process = self.nats_cluster[index].process
        if process is not None and process.returncode is None:
            os.kill(process.pid, sig)

    async def start_nats(self, index: int) -> None:
        """Restart a stopped member with its old name, ports and store."""
        server = self.nats_cluster[index]
        if server.process is not None and server.process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.process.wait(), 2)
            if server.process.returncode is None:
                raise StackError(f"nats-server {server.name} is still running (pid {server.process.pid})")
        await server.start()
        self.write_state()

    async def _on_control(self, msg: Msg) -> None:
        try:
            request = json.loads(msg.data or b"{}")
            op = request.get("op")
            if op == "start_node":
                name = str(request["name"])
                old = self.nodes.get(name)
                if old is not None and old.returncode is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(old.wait(), 2)
                    if old.returncode is None:
                        raise StackError(f"node {name} is still running (pid {old.pid})")
                await self.start_node(name)
            elif op == "start_dispatcher":
                index = int(request["index"])
                old_d = self.dispatchers.get(index)
                if old_d is not None and old_d.returncode is None:
                    raise StackError(f"dispatcher {index} is still running (pid {old_d.pid})")
                await self.start_dispatcher(index)
                self.write_state()
            elif op == "start_nats":
                await self.start_nats(int(request["index"]))
            elif op != "state":
                raise StackError(f"unknown op {op!r}")
            reply: dict[str, object] = {"ok": True, "state": self.state()}
        except Exception as exc:
            reply = {"ok": False, "error": str(exc)}
        with contextlib.suppress(Exception):
            await msg.respond(json.dumps(reply).encode())

    async def _on_node(self, msg: Msg) -> None:
        self._node_seen[msg.subject.split(".")[2]] = time.monotonic()

    async def start_dispatcher(self, index: int) -> None:
        port = self.http_ports.get(index)
        if port is None:
            port = self.config.http_port if index == 0 and self.config.http_port else free_port()
            self.http_ports[index] = port
        env = {**self._env(), **self._token_env, "JOBQ_HTTP_PORT": str(port)}
        self.dispatchers[index] = await pod_runtime.spawn(
            _cli("dispatcher"), env=env, log_path=self.logs / f"dispatcher-{index}.log")

    async def start_node(self, name: str) -> None:
        self.nodes[name] = await pod_runtime.spawn(
            _cli("node-agent", "--name", name, "--cpu", str(self.config.node_cpu),
                 "--memory", self.config.node_memory, "--interval", str(self.config.node_heartbeat_s),
                 "--work-dir", str(self.config.data_dir / "nodes")),
            env=self._env(NODE, node=name), log_path=self.logs / f"{name}.log")
        self.write_state()

    def signal_node(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a node agent (SIGKILL = the machine dies; its pods die with it)."""
        if name not in self.nodes and self.config.env.get("JOBQ_BACKEND") == "kubernetes":
            from devcluster import nodes as kubelets  # the dev cluster's simulated kubelets

            at = Path(self.config.env["JOBQ_KUBECONFIG"]).parent
            machine = sig == signal.SIGKILL  # the machine dies: its kubelet and its pods (kill_node)
            if not (kubelets.kill_node(at, name) if machine else kubelets.kill_kubelet(at, name, sig)):
                raise StackError(f"no running kubelet agent for node {name} in the dev cluster")
            return
        os.kill(self.nodes[name].pid, sig)

    def signal_dispatcher(self, index: int, sig: signal.Signals = signal.SIGKILL) -> None:
        os.kill(self.dispatchers[index].pid, sig)

    async def wait_ready(self, *, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        self.progress("waiting for the dispatcher and the nodes to report")
        async with aiohttp.ClientSession() as http:
            while True:
                self._check_alive()
                ready = await readiness.dispatchers_ready(http, self.http_url, self.http_ports.values())
                alive = [n for n, t in self._node_seen.items() if time.monotonic() - t < 3]
                if ready and len(alive) >= len(self.nodes):
                    return
                if time.monotonic() > deadline:
                    raise StackError(f"stack not ready after {timeout_s}s (a synced leader: {ready}, "
                                     f"nodes reporting: {sorted(alive)}); see logs in {self.logs}")
                await asyncio.sleep(0.1)

    def _check_alive(self) -> None:
        for index, process in self.dispatchers.items():
            if process.returncode is not None:
                log = self.logs / f"dispatcher-{index}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise StackError(f"dispatcher {index} exited with {process.returncode}; "
                                 f"last log lines from {log}:\n{tail}")

    def state(self) -> dict[str, object]:
        return {"nats_url": self.nats_url, "http_url": self.http_url, "pid": os.getpid(),
                "nodes": {name: p.pid for name, p in self.nodes.items()},
                "dispatchers": {str(i): p.pid for i, p in self.dispatchers.items()},
                "http_ports": {str(i): port for i, port in self.http_ports.items()},
                "nats_pid": self.nats.process.pid if self.nats and self.nats.process else None,
                "nats_servers": {s.name: s.process.pid if s.process else None for s in self.nats_cluster},
                "nats_monitor": {s.name: s.monitor_url for s in self.nats_cluster},
                "data_dir": str(self.config.data_dir.resolve()),
                "nats_ca": self.nats_ca or None,
                "http_token_file": (str((self.config.data_dir / TOKEN_FILE).resolve())
                                    if self._token_env else None),
                "nats_auth": self.auth.state() if self.auth is not None else None}

    def write_state(self) -> None:
        state = self.state()
        path = self.config.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    async def stop(self) -> None:
        """Graceful: dispatchers first (they stop acting), then nodes, then NATS."""
        for process in self.dispatchers.values():
            await pod_runtime.terminate(process, grace_s=10)
        await asyncio.gather(*(pod_runtime.terminate(p, grace_s=5) for p in self.nodes.values()))
        if self._callout is not None:
            await self._callout.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
        await asyncio.gather(*(server.stop() for server in self.nats_cluster))
        with contextlib.suppress(OSError):
            (self.config.data_dir / STATE_FILE).unlink()

