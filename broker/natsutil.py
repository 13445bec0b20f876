"""The thin NATS layer every jobq process shares: connecting, and retrying through failovers.

A leaf module (it imports only nats, the wire contract and logsetup), so the submitter and the workers can
use it without depending on the broker's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from broker import contract, logsetup

log = logsetup.get_logger("jobq.nats")  # structlog's, or stdlib's in the light client (no structlog)


class _TlsCloseNoise(logging.Filter):
    """Drops asyncio's warning at every close of a connection nats-py upgraded to TLS (its stream
    protocol was made before the upgrade: nats-io/nats.py#727); it says nothing about the link."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_TlsCloseNoise())

class _Client(NATS):
    """nats-py's client, except that a refusal of its credentials read *after* it had connected
    is a lost connection to reconnect from, not the end of the client.

    nats-py closes a client for good on an ``Authorization Violation`` that arrives while it is
    connected. With the auth callout, a reconnecting client can get exactly that for a reason
    that passes: a broker is killed, the client and the callout's responders reconnect at the
    same time, the surviving server asks the callout before any responder has resubscribed, and
    it refuses the client when the callout times out. A node agent whose client was closed
    evicted its pods and exited (the chaos broker-kill run in CI lost two of three nodes so).
    Reconnecting keeps trying every server, as after any other outage, each refusal reported to
    the error callback; a one-shot client still gives up after its few reconnects."""

    async def _process_err(self, err_msg: str) -> None:
        if "authorization violation" in err_msg.lower() and not self.is_connecting:
            self._err = nats.errors.AuthorizationError()
            await self._error_cb(self._err)
            await self._process_op_err(self._err)
            return
        await super()._process_err(err_msg)


T = TypeVar("T")
_TLS_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
"""TLS errors of a connection cut mid-handshake (a server restarting): retried like any outage."""
_TLS_CUT_REASONS = frozenset({"APPLICATION_DATA_AFTER_CLOSE_NOTIFY"})
"""SSLError reasons of a connection the server ended after the handshake: retried too. A server
that refuses a client after the auth callout timed out (its responder was killed holding the
request) closes TLS and then writes its -ERR; a task pod took that for a TLS misconfiguration,
gave up at once and exited 4 during a dispatcher failover."""


def _tls_misconfigured(exc: Exception) -> bool:
    """A TLS error that retrying will not mend (a certificate, a protocol): not a cut connection."""
    return (isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_CUT)
            and exc.reason not in _TLS_CUT_REASONS)

TRANSIENT: tuple[type[Exception], ...] = (
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.TimeoutError,
    nats.js.errors.ServiceUnavailableError,
)
"""Errors seen while a JetStream leader is elected or a server reconnects: worth retrying."""

TRANSIENT_OR_RECONNECTING: tuple[type[Exception], ...] = (
    *TRANSIENT,
    nats.errors.ConnectionReconnectingError,
    TimeoutError,
)
"""TRANSIENT, plus a client caught reconnecting and any timeout (``asyncio.wait_for`` included):
for a worker, whose every JetStream call must outlast a failover before its attempt gives up."""


async def connect(
    url: str,
    *,
    name: str,
    environ: Mapping[str, str] | None = None,
    auth: Mapping[str, Any] | None = None,
    reconnect_forever: bool = True,
    connect_timeout_s: float = 5.0,
    reconnect_wait_s: float = 0.5,
    give_up_after_s: float | None = None,
    on_closed: Callable[[], None] | None = None,
    inbox_prefix: str | None = None,
    nats_options: Mapping[str, Any] | None = None,
) -> NATS:
    """Connect to ``url`` (one server or a comma-separated list); ConnectionError if NATS cannot
    be reached.

    Credentials come from ``auth`` (``nats.connect`` options) or else from the environment (see
    contract.nats_auth_options). ``reconnect_forever=False`` (a one-shot client such as the CLI)
    gives up after a few tries; the failed tries before that are logged at debug level only, so
    the error is said once. ``give_up_after_s`` (a worker) keeps trying to connect for that long,
    logging the first error of each outage only, then closes the client and gives up.
    ``inbox_prefix``: where replies come (a task pod may subscribe to its own only).

    TLS comes from ``nats_options["tls"]`` or else from the environment (contract.nats_tls_options:
    JOBQ_NATS_CA); ``nats_options`` (any nats.connect options) win over the environment's."""
    connected = False
    failing: list[Exception] = []
    """The last error of the current outage (cleared on reconnect)."""

    tls_failed = asyncio.Event()
    """Set when TLS refuses the first connect (a certificate that does not verify, an alert), after
    which nats-py hangs closing the transport (nats-io/nats.py#718): the connect gives up at once."""

    refused: list[str] = []
    """Why the server refused our credentials, if it did (nats-py then reports no servers)."""

    async def error_cb(exc: Exception) -> None:
        first = not failing
        failing[:] = [exc]
        if "authorization violation" in str(exc).lower() or "authentication" in str(exc).lower():
            refused[:] = [str(exc)]
        if _tls_misconfigured(exc) and not connected:
            tls_failed.set()
        if not (connected or reconnect_forever):
            log.debug("nats_connect_failed", error=repr(exc))
        elif first or give_up_after_s is None:
            log.warning("nats_error", error=repr(exc))

    async def disconnected_cb() -> None:
        if connected and not (nc.is_closed or nc.is_draining):
            log.warning("nats_disconnected")

    async def reconnected_cb() -> None:
        failing.clear()
        log.info("nats_reconnected")

    async def closed_cb() -> None:
        if on_closed is not None:
            on_closed()

    options: dict[str, Any] = dict(
        auth if auth is not None else contract.nats_auth_options(os.environ if environ is None else environ)
    )
    options.update(_tls_options(os.environ if environ is None else environ,
                                given={**options, **(nats_options or {})}))
    options.update(nats_options or {})
    options.update(connect_timeout=connect_timeout_s, reconnect_time_wait=reconnect_wait_s)
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    servers = [s.strip() for s in url.split(",") if s.strip()]
    nc = _Client()
    try:
        await asyncio.wait_for(
            _unless_tls_fails(tls_failed, failing, nc.connect(
                servers=servers,
                name=name,
                max_reconnect_attempts=-1 if reconnect_forever or give_up_after_s is not None else 3,
                allow_reconnect=True,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                closed_cb=closed_cb,
                **options,
            )),
            timeout=give_up_after_s,
        )
    except (nats.errors.Error, OSError) as exc:  # OSError includes TimeoutError
        unreachable = isinstance(exc, nats.errors.NoServersError | OSError)
        if give_up_after_s is None and not unreachable:
            raise
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)  # it would go on reconnecting forever
        last = failing[-1] if failing else exc
        tls_problem = (contract.describe_tls_failure(last, url)
                       if not isinstance(last, ssl.SSLError) or _tls_misconfigured(last) else None)
        if tls_problem is not None:
            raise ConnectionError(tls_problem) from exc
        if refused:
            raise ConnectionError(
                f"NATS at {url} refused this client's credentials ({refused[-1]}): set "
                f"{contract.ENV_NATS_USER} with {contract.ENV_NATS_PASSWORD_FILE} (a `jobq up` stack keeps "
                f"the submitter's in <data dir>/nats-auth/submitter.password) or {contract.ENV_NATS_TOKEN}"
            ) from exc
        if give_up_after_s is not None:
            raise ConnectionError(
                f"cannot reach NATS at {', '.join(servers)} within {give_up_after_s:g} s "
                f"(last error: {failing[-1] if failing else exc!r})"
            ) from exc
        raise ConnectionError(
            f"cannot reach NATS at {url}: {exc}. Is the jobq stack running "
            "(jobq up), or is --nats / JOBQ_NATS_URL right?"
        ) from exc
    connected = True
    if (options.get("tls") is not None or "tls://" in url) and not _speaks_tls(nc):
        await nc.close()  # nats-py upgrades only when the server asks (INFO tls_required)
        raise ConnectionError(f"NATS at {url} does not speak TLS, but {contract.ENV_NATS_CA} or a "
                              "tls:// URL asks for it: is it the right server?")
    return nc


def _speaks_tls(nc: NATS) -> bool:
    """Whether the connection was upgraded to TLS (the server's INFO required it)."""
    info: dict[str, Any] = getattr(nc, "_server_info", {})
    return bool(info.get("tls_required"))


async def _unless_tls_fails(failed: asyncio.Event, errors: list[Exception],
                            connecting: Awaitable[None]) -> None:
    """Await ``connecting`` unless ``failed`` is set first; then cancel it and raise the error."""
    task = asyncio.ensure_future(connecting)
    waiter = asyncio.ensure_future(failed.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        return task.result()
    raise errors[-1]


def _tls_options(environ: Mapping[str, str], *, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The environment's TLS options, unless the caller gave its own ``tls``."""
    return {} if given is not None and "tls" in given else contract.nats_tls_options(environ)


RETRY_BUDGET_S = 30.0
"""How long ``retry`` keeps trying: longer than a JetStream leader election after a server dies
(4-10 s measured on a 3-server cluster, with the Raft election timeout and the client's reconnect)."""


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    budget_s: float = RETRY_BUDGET_S,
    delay_s: float = 0.25,
    max_delay_s: float = 2.0,
    transient: tuple[type[Exception], ...] = TRANSIENT,
    what: str = "",
) -> T:
    """Retry ``call`` through ``transient`` errors (publishes keep their Nats-Msg-Id, so a
    retried publish is stored once) for up to ``budget_s``, backing off from ``delay_s`` to
    ``max_delay_s``; the last error is raised once the budget is spent. "No responders" comes
    back at once during an election: a budget of tries would be spent in a second or two, so
    the budget is time. ``what`` names the operation in the log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    n = 0
    while True:
        n += 1
        try:
            return await call()
        except transient as exc:
            if loop.time() + delay_s > deadline:
                raise
            log.warning("nats_call_retried", operation=what or None, error=repr(exc), attempt=n,
                        retry_in_s=delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, max_delay_s)
