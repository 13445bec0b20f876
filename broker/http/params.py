"""Request parameters and JSON errors of the API: ``{"error": <code>, "message": <sentence>,
"param": <name|null>}`` (``responses.Error``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from aiohttp import web

from broker import contract
from broker.http import responses

JOB_ID = re.compile(contract.JOB_ID_PATTERN)
QUEUE = re.compile(contract.QUEUE_PATTERN)
ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
}


def error(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.HTTPException:
    body = json.dumps(responses.Error(error=code, message=message, param=param).model_dump())
    kind = ERRORS[status]
    return kind(text=body, content_type="application/json", headers=headers)


def bad_param(param: str, message: str) -> web.HTTPException:
    return error(400, "bad_request", message, param=param)


def query(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    allowed = set(allowed)
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise bad_param(name, f"unknown query parameter {name!r}; this route takes: {known}")
        if name in params:
            raise bad_param(name, f"query parameter {name!r} is given more than once")
        params[name] = value
    return params


def int_param(params: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_param(name, f"{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise bad_param(name, f"{name} must be between {low} and {high}, not {value}")
    return value


def job_id_of(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not JOB_ID.match(job_id):
        raise bad_param(
            "job_id", f"{job_id!r} is not a job id (a lower-case DNS label of at most 40 characters)"
        )
    return job_id
