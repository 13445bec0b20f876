"""Composition root: the one place that picks concrete classes and wires a dispatcher process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path

import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from broker import natsutil, settings, store
from broker.backends import base, local
from broker.dispatcher import service
from broker.natsauth import callout, keys

log = structlog.get_logger("jobq.app")


def make_backend(config: settings.Settings, nc: NATS) -> base.ClusterBackend:
    if config.backend.kind == "kubernetes":
        from broker.backends import kubernetes  # optional dependency (kubernetes_asyncio), imported on demand

        backend: base.ClusterBackend = kubernetes.KubernetesBackend(
            config.backend, nc=nc)
        return backend
    return local.LocalBackend(nc, node_timeout_s=config.dispatcher.node_timeout_s)


async def run_dispatcher(config: settings.Settings, stop: asyncio.Event, *,
                         ready: Callable[[str], None] | None = None) -> None:
    """Run one dispatcher (leader or standby) with its HTTP endpoint until ``stop``."""
    from broker.http import server as http_server

    async with contextlib.AsyncExitStack() as stack:
        nc = await natsutil.connect(config.nats.url, name="jobq-dispatcher")
        stack.push_async_callback(_drain, nc)
        # On a NATS cluster a stream or bucket just created may be "not found" for a moment on the
        # server we ask (its Raft group is still forming); opening again is safe (create-or-keep).
        st = await natsutil.retry(
            functools.partial(store.Store.open, nc, replicas=config.nats.replicas,
                              lease_ttl_s=config.dispatcher.lease_ttl_s,
                              idempotency_window_s=config.dispatcher.idempotency_window_s),
            transient=(*natsutil.TRANSIENT, nats.js.errors.NotFoundError), what="store_open")
        backend = await stack.enter_async_context(make_backend(config, nc))
        observer = http_server.metrics_observer()
        dispatcher = service.Dispatcher(st=st, backend=backend, config=config, observer=observer)
        if config.nats.auth_dir:  # node agents and task pods connect through our auth callout
            callout_service = await callout.server(nc, keys.callout_keys(Path(config.nats.auth_dir))).start()
            stack.push_async_callback(callout_service.stop)
        address = await stack.enter_async_context(http_server.serve(dispatcher, config.http))
        log.info("dispatcher_started", http=address, nats=config.nats.url, backend=backend.name)
        if ready is not None:
            ready(address)
        await dispatcher.run(stop)
    log.info("dispatcher_stopped")


async def _drain(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), 5)
