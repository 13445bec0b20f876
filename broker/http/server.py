"""aiohttp application and its lifecycle (serve as an async context manager)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from broker import settings
from broker.dispatcher import reconcile
from broker.dispatcher.service import Dispatcher

DISPATCHER = web.AppKey("dispatcher", Dispatcher)


def metrics_observer() -> reconcile.Observer:
    return reconcile.Observer()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    ready = dispatcher.index_ready.is_set() and (dispatcher.status.synced or not dispatcher.status.leader)
    body = {"status": "ok" if ready else "starting", "leader": dispatcher.status.leader}
    return web.json_response(body, status=200 if ready else 503)


def make_app(dispatcher: Dispatcher, config: settings.HttpSettings) -> web.Application:
    app = web.Application()
    app[DISPATCHER] = dispatcher
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def serve(dispatcher: Dispatcher, config: settings.HttpSettings) -> AsyncIterator[str]:
    """Serve the app; yields the address as http://host:port/."""
    runner = web.AppRunner(make_app(dispatcher, config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    server = site._server
    port = server.sockets[0].getsockname()[1] if server and server.sockets else config.port  # type: ignore[union-attr]
    try:
        yield f"http://{config.host}:{port}/"
    finally:
        await runner.cleanup()
