"""aiohttp application and its lifecycle (serve as an async context manager).

Routes (documented in ``/api/openapi.json``, see broker/http/openapi.py)::

    GET  /                        dashboard            GET  /api/nodes
    GET  /static/{name}           dashboard assets     GET  /api/queues
    GET  /metrics                 Prometheus           GET  /api/dead-letters
    GET  /healthz  /readyz        probes (open)        POST /api/dead-letters/{job_id}/retry
                                                       GET  /api/dead-letters/{seq}/original
    GET  /api/jobs                                     GET  /api/events (server-sent events)
    GET  /api/jobs/{job_id}                            GET  /api/openapi.json
    GET  /api/jobs/{job_id}/log
    GET  /api/jobs/{job_id}/artifacts
    GET  /api/jobs/{job_id}/artifacts/{name}
    POST /api/jobs/{job_id}/cancel

Who may call what (bearer token, cross-origin rules): broker/http/access.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from broker import metrics, settings
from broker.dispatcher import reconcile
from broker.dispatcher.service import Dispatcher
from broker.http import access, api, artifacts, dashboard, openapi, responses, streams
from broker.http.keys import DISPATCHER, HUB, METRICS, SETTINGS
from broker.http.params import query
from broker.readmodel import backlog

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_observer() -> reconcile.Observer:
    """The dispatcher's observer: a fresh metrics registry per dispatcher."""
    return metrics.Metrics()


async def healthz(request: web.Request) -> web.Response:
    query(request, ())
    return web.json_response(responses.Health(status="ok").model_dump(mode="json", exclude_unset=True))


async def readyz(request: web.Request) -> web.Response:
    query(request, ())
    dispatcher = request.app[DISPATCHER]
    ready = dispatcher.index_ready.is_set() and (dispatcher.status.synced or not dispatcher.status.leader)
    body = responses.Health(
        status="ok" if ready else "starting",
        leader=dispatcher.status.leader,
        synced=dispatcher.status.synced,
        nats_connected=dispatcher.store.nc.is_connected,
        jobs=len(dispatcher.index),
        backend=dispatcher.backend.name,
    )
    return web.json_response(body.model_dump(mode="json"), status=200 if ready else 503)


async def prometheus(request: web.Request) -> web.Response:
    query(request, ())
    m = request.app[METRICS]
    await m.refresh()
    return web.Response(body=m.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def openapi_doc(request: web.Request) -> web.Response:
    query(request, ())
    return web.json_response(openapi.document())


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer errors under /api/ (and the probes) in JSON, like the handlers' own errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if (
            exc.status < 400
            or exc.content_type == "application/json"
            or not (request.path.startswith("/api/") or request.path in ("/metrics", "/healthz", "/readyz"))
        ):
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "error")
        return web.json_response(
            {"error": code, "message": exc.reason, "param": None},
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )


async def _background(app: web.Application) -> AsyncIterator[None]:
    """The event hub's NATS subscription and the node poller live as long as the app."""
    dispatcher, m, hub = app[DISPATCHER], app[METRICS], app[HUB]
    await hub.start(dispatcher.store.nc)
    m.on_node_change(
        lambda node: hub.publish(
            "node", json.dumps({"name": node.name, "ready": node.ready, "pods": node.pods})
        )
    )
    stop = asyncio.Event()
    poller = asyncio.create_task(m.watch_nodes(stop), name="metrics-node-poller")
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(poller, return_exceptions=True)
        await hub.stop()


async def _close_streams(app: web.Application) -> None:
    await app[HUB].stop()


def metrics_sources(dispatcher: Dispatcher) -> metrics.Sources:
    """What the metrics read of a dispatcher, each through a narrow interface."""
    return metrics.Sources(
        index=dispatcher.index,
        index_ready=dispatcher.index_ready.is_set,
        status=dispatcher.status,
        nats_connected=lambda: dispatcher.store.nc.is_connected,
        list_nodes=dispatcher.backend.list_nodes,
        read_backlog=functools.partial(backlog.read, dispatcher.store.js),
    )


def make_app(dispatcher: Dispatcher, config: settings.HttpSettings) -> web.Application:
    app = web.Application(middlewares=[access.cors, json_errors, access.require_token])
    app[DISPATCHER] = dispatcher
    app[SETTINGS] = config
    observer = dispatcher.observer
    m = observer if isinstance(observer, metrics.Metrics) else metrics.Metrics()
    m.bind(metrics_sources(dispatcher))
    app[METRICS] = m
    app[HUB] = streams.EventHub()
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_streams)
    for method, path, handler in routes():
        app.router.add_route(method, path, handler)
    return app


def routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/", dashboard.index),
        ("GET", "/static/{name}", dashboard.asset),
        ("GET", "/metrics", prometheus),
        ("GET", "/healthz", healthz),
        ("GET", "/readyz", readyz),
        ("GET", "/api/jobs", api.list_jobs),
        ("GET", "/api/jobs/{job_id}", api.get_job),
        ("GET", "/api/jobs/{job_id}/log", api.job_log),
        ("GET", "/api/jobs/{job_id}/artifacts", artifacts.list_artifacts),
        ("GET", "/api/jobs/{job_id}/artifacts/{name:.+}", artifacts.get_artifact),
        ("POST", "/api/jobs/{job_id}/cancel", api.cancel_job),
        ("GET", "/api/nodes", api.list_nodes),
        ("GET", "/api/queues", api.list_queues),
        ("GET", "/api/dead-letters", api.list_dead_letters),
        ("POST", "/api/dead-letters/{job_id}/retry", api.retry_dead_letter),
        ("GET", "/api/dead-letters/{seq}/original", api.dead_letter_original),
        ("GET", "/api/events", api.events),
        ("GET", "/api/openapi.json", openapi_doc),
    ]


def tls_context(config: settings.HttpSettings) -> ssl.SSLContext | None:
    """The server's SSL context for JOBQ_HTTP_TLS_CERT/KEY (None: plain HTTP)."""
    if not config.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except OSError as exc:  # ssl.SSLError included
        raise settings.SettingsError(
            f"JOBQ_HTTP_TLS_CERT={config.tls_cert_file!r} / JOBQ_HTTP_TLS_KEY={config.tls_key_file!r}: "
            f"cannot load them: {exc.strerror or exc}") from None
    return context


@contextlib.asynccontextmanager
async def serve(dispatcher: Dispatcher, config: settings.HttpSettings) -> AsyncIterator[str]:
    """Serve the app (HTTPS when JOBQ_HTTP_TLS_CERT is set); yields the address as
    http(s)://host:port/."""
    access.describe(config)
    context = tls_context(config)
    runner = web.AppRunner(make_app(dispatcher, config), access_log=None, shutdown_timeout=3)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=context)
    await site.start()
    port = int(runner.addresses[0][1]) if runner.addresses else config.port
    try:
        yield f"{'https' if context else 'http'}://{config.host}:{port}/"
    finally:
        await runner.cleanup()
