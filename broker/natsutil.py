"""The thin NATS layer every jobq process shares: connecting, and publishing through failovers.

A leaf module (it imports only nats and the wire contract), so the submitter and the workers can
use it without depending on the broker's internals.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from broker import contract

log = structlog.get_logger("jobq.nats")

T = TypeVar("T")

TRANSIENT = (
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.TimeoutError,
    nats.js.errors.ServiceUnavailableError,
)
"""Errors seen while a JetStream leader is elected or a server reconnects: worth retrying."""


async def connect(
    url: str,
    *,
    name: str,
    environ: Mapping[str, str] | None = None,
    reconnect_forever: bool = True,
    connect_timeout_s: float = 5.0,
    on_closed: Callable[[], None] | None = None,
) -> NATS:
    """Connect with credentials from the environment (see contract.nats_auth_options).

    ``reconnect_forever=False`` (a one-shot client such as the CLI) gives up after a few tries
    and raises ConnectionError; the failed tries before that are logged at debug level only, so
    the error is said once."""
    connected = False

    async def error_cb(exc: Exception) -> None:
        if connected or reconnect_forever:
            log.warning("nats_error", error=repr(exc))
        else:
            log.debug("nats_connect_failed", error=repr(exc))

    async def closed_cb() -> None:
        if on_closed is not None:
            on_closed()

    options: dict[str, Any] = contract.nats_auth_options(os.environ if environ is None else environ)
    try:
        nc = await nats.connect(
            servers=url.split(","),
            name=name,
            connect_timeout=connect_timeout_s,
            max_reconnect_attempts=-1 if reconnect_forever else 3,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            error_cb=error_cb,
            closed_cb=closed_cb,
            **options,
        )
    except (nats.errors.NoServersError, OSError) as exc:
        raise ConnectionError(
            f"cannot reach NATS at {url}: {exc}. Is the jobq stack running "
            "(jobq up), or is --nats / JOBQ_NATS_URL right?"
        ) from exc
    connected = True
    return nc


RETRY_BUDGET_S = 30.0
"""How long ``retry`` keeps trying: longer than a JetStream leader election after a server dies
(4-10 s measured on a 3-server cluster, with the Raft election timeout and the client's reconnect)."""


async def retry(call: Callable[[], Awaitable[T]], *, budget_s: float = RETRY_BUDGET_S,
                delay_s: float = 0.25, max_delay_s: float = 2.0) -> T:
    """Retry ``call`` through transient JetStream errors (publishes keep their Nats-Msg-Id, so a
    retried publish is stored once) for up to ``budget_s``, backing off from ``delay_s`` to
    ``max_delay_s``. "No responders" comes back at once during an election: a budget of tries
    would be spent in a second or two, so the budget is time."""
    deadline = asyncio.get_running_loop().time() + budget_s
    n = 0
    while True:
        n += 1
        try:
            return await call()
        except TRANSIENT as exc:
            if asyncio.get_running_loop().time() + delay_s > deadline:
                raise
            log.warning("nats_call_retried", error=type(exc).__name__, attempt=n, retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, max_delay_s)
