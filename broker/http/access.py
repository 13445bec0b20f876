"""Who may call the HTTP API: the bearer token and the cross-origin rules (two middlewares).

**Token.** With ``JOBQ_HTTP_TOKEN`` (or ``JOBQ_HTTP_TOKEN_FILE``) set, every route but the probes
(``/healthz``, ``/readyz``) and the dashboard shell (``/``, ``/static/*``: the page that asks for
the token) needs ``Authorization: Bearer <token>``; ``/metrics`` too unless
``JOBQ_HTTP_METRICS_OPEN``. The token is compared in constant time and never logged; a missing or
wrong one is a 401 with ``WWW-Authenticate: Bearer`` and the API's JSON error. There is no other
way to pass it (no query parameter, no cookie): URLs end up in logs, cookies invite CSRF.

**Cross-origin.** No CORS headers by default, so browsers keep other sites' pages from reading
the API. Origins in ``JOBQ_HTTP_CORS_ORIGINS`` get ``Access-Control-Allow-Origin`` (their own
origin, never ``*``), may send ``Authorization`` and need no credentials (cookies are never
used); their preflight ``OPTIONS`` is answered here. Other origins' preflights get a 403 with no
CORS headers, and their POSTs are refused by ``api.authorize`` even without a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from broker import settings
from broker.http.keys import SETTINGS
from broker.http.params import error

log = structlog.get_logger("jobq.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/", "/static/{name}"})
"""Routes (as registered, not as requested: no path trick reaches another route) served without
the token: the probes and the dashboard page with its two assets."""
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE_S = 600
CHALLENGE = 'Bearer realm="jobq"'


def needs_token(route: str, config: settings.HttpSettings) -> bool:
    """Whether a request matched to ``route`` (its template; "" for none: unknown paths too)
    needs the token."""
    if not config.token or route in OPEN_ROUTES:
        return False
    return not (route == "/metrics" and config.metrics_open)


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def check_token(request: web.Request, token: str) -> None:
    """Raise a 401 unless the request carries ``Authorization: Bearer <token>``."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        log.info("http_refused", http_method=request.method, http_path=request.path, reason="no_token")
        raise error(
            401,
            "unauthorized",
            "this dispatcher needs 'Authorization: Bearer <token>' (JOBQ_HTTP_TOKEN)",
            headers={"WWW-Authenticate": CHALLENGE},
        )
    if not hmac.compare_digest(given.encode(), token.encode()):
        log.info("http_refused", http_method=request.method, http_path=request.path, reason="wrong_token")
        raise error(
            401,
            "invalid_token",
            "the bearer token is not this dispatcher's token",
            headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'},
        )


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[SETTINGS]
    if request.method != "OPTIONS" and needs_token(route_of(request), config):
        check_token(request, config.token)
    return await handler(request)


def same_origin(request: web.Request, origin: str) -> bool:
    return urlsplit(origin).netloc == request.host


def allowed_origin(request: web.Request) -> str | None:
    """The request's Origin if it is another origin listed in JOBQ_HTTP_CORS_ORIGINS."""
    origin = request.headers.get("Origin")
    if not origin or same_origin(request, origin):
        return None
    return origin if origin.rstrip("/") in request.app[SETTINGS].cors_origins else None


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": "WWW-Authenticate",
    }


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights; add Access-Control-Allow-Origin for listed origins, errors included."""
    origin = allowed_origin(request)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if origin is None:
            raise error(403, "forbidden", "this origin may not call the API (JOBQ_HTTP_CORS_ORIGINS)")
        return web.Response(
            status=204,
            headers={
                **_cors_headers(origin),
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            },
        )
    if origin is None:
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(_cors_headers(origin))
        raise
    if not response.prepared:  # a stream (SSE) sets them before it starts, see api.events
        response.headers.update(_cors_headers(origin))
    return response


def stream_headers(request: web.Request) -> dict[str, str]:
    """CORS headers for a response prepared by its handler (server-sent events)."""
    origin = allowed_origin(request)
    return _cors_headers(origin) if origin else {}


def describe(config: settings.HttpSettings) -> None:
    """Log once at start whether the API is open (never the token itself)."""
    if not config.token:
        log.warning(
            "http_api_open",
            reason="JOBQ_HTTP_TOKEN is not set: anyone who can reach "
            "this port can read jobs (arguments included), cancel and re-drive them",
            http_host=config.host,
        )
    else:
        log.info(
            "http_api_token_required",
            metrics_open=config.metrics_open,
            cors_origins=list(config.cors_origins),
        )
