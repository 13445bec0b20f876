"""The kubelet's HTTPS API: ``GET /containerLogs/<ns>/<pod>/<container>`` (what ``kubectl logs``
reaches through the API server) and ``/healthz``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path

import structlog
from aiohttp import web

from workers.kubelet.pod_state import _Pod
from workers.kubelet.pods import PodManager
from workers.kubelet.settings import KubeletSettings
from workers.kubelet.timestamps import _parse_iso

log = structlog.get_logger("jobq.kubelet")

KUBELET_CLIENT_CN = "kube-apiserver-kubelet-client"


@dataclasses.dataclass(frozen=True, slots=True)
class LogOptions:
    """Query parameters of ``/containerLogs`` (the API server forwards those of ``pods/log``)."""

    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_seconds: int | None = None
    since_time: dt.datetime | None = None
    previous: bool = False

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> LogOptions:
        def flag(name: str) -> bool:
            return query.get(name, "false").lower() in ("1", "true", "yes")

        def number(name: str) -> int | None:
            raw = query.get(name)
            if raw is None or raw == "":
                return None
            value = int(raw)
            if value < 0:
                raise ValueError(f"{name} must not be negative")
            return value

        since_time = query.get("sinceTime")
        return cls(follow=flag("follow"), tail_lines=number("tailLines"), limit_bytes=number("limitBytes"),
                   since_seconds=number("sinceSeconds"),
                   since_time=_parse_iso(since_time) if since_time else None, previous=flag("previous"))


def tail_start(path: Path, lines: int, *, lo: int, hi: int, block: int = 8192) -> int:
    """Offset in ``path`` where the last ``lines`` lines of the bytes ``[lo, hi)`` begin."""
    if lines == 0:
        return hi
    with path.open("rb") as handle:
        buf = b""
        pos = hi
        while True:
            step = min(block, pos - lo)
            pos -= step
            handle.seek(pos)
            buf = handle.read(step) + buf
            body = buf[:-1] if buf.endswith(b"\n") else buf
            idx = len(body)
            for _ in range(lines):
                idx = body.rfind(b"\n", 0, idx)
                if idx < 0:
                    break
            if idx >= 0:
                return pos + idx + 1
            if pos <= lo:
                return lo
            block *= 2


def _line_start(path: Path, offset: int, *, lo: int) -> int:
    """``offset`` moved forward to the start of a line (unchanged if it is one)."""
    if offset <= lo:
        return lo
    with path.open("rb") as handle:
        handle.seek(offset - 1)
        if handle.read(1) == b"\n":
            return offset
        rest = handle.read(1 << 20)
    newline = rest.find(b"\n")
    return offset + newline + 1 if newline >= 0 else offset + len(rest)


class LogServer:
    """The kubelet's HTTPS endpoint that ``kubectl logs`` reaches through the API server.

    TLS with the node's serving certificate; a client certificate from the cluster CA is
    required, and only ``CN=kube-apiserver-kubelet-client`` (the API server) or group
    ``system:masters`` may read logs (a real kubelet asks the API server with a
    SubjectAccessReview; the node's own and other identities get 403).
    """

    def __init__(self, pods: PodManager, settings: KubeletSettings) -> None:
        self._pods = pods
        self._s = settings
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        """Serve on a free loopback port; returns it (0 without TLS files: no server)."""
        s = self._s
        if not (s.tls_cert_file and s.tls_private_key_file and s.client_ca_file):
            log.warning("kubelet_log_server_disabled", node=s.name,
                        reason="no --tls-cert-file/--tls-private-key-file/--client-ca-file")
            return 0
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(s.client_ca_file))
        context.load_cert_chain(str(s.tls_cert_file), str(s.tls_private_key_file))
        context.verify_mode = ssl.CERT_REQUIRED
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, ssl_context=context, shutdown_timeout=1.0)
        await site.start()
        log.info("kubelet_log_server_started", node=s.name, port=port)
        return port

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    def _denied(request: web.Request) -> str:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        if not cert:
            return "client certificate required"
        names = [(k, v) for rdn in cert.get("subject", ()) for k, v in rdn]
        common = [v for k, v in names if k == "commonName"]
        groups = [v for k, v in names if k == "organizationName"]
        if KUBELET_CLIENT_CN in common or "system:masters" in groups:
            return ""
        user = common[0] if common else "?"
        return f'Forbidden (user={user}, verb=get, resource=nodes, subresource=log)'

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        denied = self._denied(request)
        if denied:
            return web.Response(status=403, text=denied)
        namespace, name = request.match_info["namespace"], request.match_info["pod"]
        container = request.match_info["container"]
        pod = self._pods.find_pod(namespace, name)
        if pod is None:
            return web.Response(status=404, text=f'pod "{name}" in namespace "{namespace}" not found on '
                                                 f"node {self._s.name}")
        if container != pod.container:
            return web.Response(status=404, text=f'container "{container}" in pod "{name}" not found')
        try:
            opts = LogOptions.parse(request.query)
        except ValueError as exc:
            return web.Response(status=400, text=f"invalid log options: {exc}")
        if opts.previous:
            return web.Response(status=400, text=f'previous terminated container "{container}" in pod '
                                                 f'"{name}" not found')
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await self._stream(pod, opts, resp)
            await resp.write_eof()
        return resp

    async def _stream(self, pod: _Pod, opts: LogOptions, resp: web.StreamResponse) -> None:
        path, lo = pod.log_path, pod.log_offset
        hi = pod.log_size()
        start = lo
        cutoff = (time.time() - opts.since_seconds if opts.since_seconds is not None
                  else opts.since_time.timestamp() if opts.since_time is not None else None)
        if cutoff is not None and hi > lo:
            start = _line_start(path, max(lo, min(pod.offset_at(cutoff), hi)), lo=lo)
        if opts.tail_lines is not None and hi > start:
            start = max(start, tail_start(path, opts.tail_lines, lo=start, hi=hi))
        remaining = opts.limit_bytes
        pos = start
        while remaining is None or remaining > 0:
            ended = pod.ended.is_set()  # read before the size: a final read follows the end
            chunk = b""
            with contextlib.suppress(OSError), path.open("rb") as handle:
                handle.seek(pos)
                chunk = handle.read(65536 if remaining is None else min(65536, remaining))
            if chunk:
                await resp.write(chunk)
                pos += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
                continue
            if not opts.follow or ended or self._stopping.is_set() or not self._pods.still_known(pod):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pod.ended.wait(), 0.25)
