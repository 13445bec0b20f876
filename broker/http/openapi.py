"""The OpenAPI 3.1 document of the dispatcher's HTTP interface (served at /api/openapi.json).

The paths are written here; every response shape is generated from the typed models the
handlers build (``responses.py``, which reuse the wire contract's and the read model's), so the
document cannot drift from what the API returns. Tests check that every route is documented
and every documented operation is routed.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from broker import contract
from broker.http import responses

Json = dict[str, Any]

REF = "#/components/schemas/{model}"


def _ref(name: str) -> Json:
    return {"$ref": REF.format(model=name)}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "A query or path parameter is invalid; `param` names it."),
}
NOT_FOUND = {"404": _json(_ref("Error"), "No such job.")}
UNAUTHORIZED = {
    "401": {
        **_json(
            _ref("Error"),
            "A token is configured (JOBQ_HTTP_TOKEN) and the request has no `Authorization: Bearer` "
            "header (`error`: `unauthorized`) or the wrong token (`invalid_token`).",
        ),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
}
MUTATION_ERRORS = {
    "403": _json(_ref("Error"), "A cross-origin request from an origin not in JOBQ_HTTP_CORS_ORIGINS."),
    "409": _json(_ref("Error"), "The job is not in a state that allows this."),
}
ARTIFACT_NAME = {
    "type": "string",
    "pattern": contract.ARTIFACT_NAME_PATTERN,
    "maxLength": contract.MAX_ARTIFACT_NAME_CHARS,
}
ARTIFACT_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": ARTIFACT_NAME}
BYTES = {"description": "The bytes", "content": {"application/octet-stream": {"schema": {"type": "string"}}}}
ARTIFACT_ERRORS = {
    "404": _json(_ref("Error"), "No such job; the job has no accepted result (yet); no such artifact."),
    "409": _json(_ref("Error"), "What is stored is not what the accepted attempt wrote."),
}
OPEN = ("/", "/static/{name}", "/healthz", "/readyz")
"""Paths served without the token (``access.OPEN_ROUTES``); /metrics only with JOBQ_HTTP_METRICS_OPEN."""
SECURED: list[Json] = [{"bearer": []}, {}]
"""The bearer token when one is configured (``{}``: none is when none is)."""


def _secure(paths: Json) -> Json:
    """Mark every operation but the open ones as needing the token, with its 401."""
    for path, ops in paths.items():
        for op in ops.values():
            if path in OPEN:
                op["security"] = []
            else:
                op["security"] = SECURED
                op["responses"] = {**op["responses"], **UNAUTHORIZED}
    return paths


def _query(name: str, schema: Json, description: str) -> Json:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


JOB_ID_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": contract.JOB_ID_PATTERN},
}
LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Page size.")


def _schemas() -> Json:
    """Every response model's JSON Schema (serialization mode), referenced from the paths."""
    _, generated = models_json_schema(
        [(model, "serialization") for model in responses.MODELS], ref_template=REF
    )
    return dict(generated.get("$defs", {}))


@functools.cache
def document() -> Json:
    """The OpenAPI 3.1 document (built once)."""
    states = {
        "type": "string",
        "description": "Comma-separated states: " + ", ".join(p.value for p in contract.JobPhase),
    }
    paths: Json = {
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The dashboard page",
                "tags": ["dashboard"],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/static/{name}": {
            "get": {
                "operationId": "dashboardAsset",
                "summary": "The dashboard's script and stylesheet",
                "tags": ["dashboard"],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["app.js", "style.css"]},
                    }
                ],
                "responses": {
                    "200": {"description": "The asset", "content": {"text/javascript": {}, "text/css": {}}},
                    "404": {"description": "No such asset"},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "tags": ["probes"],
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {}}}},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "tags": ["probes"],
                "responses": {"200": _json(_ref("Health"), "The process serves")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: index loaded and, if leading, backend synced",
                "tags": ["probes"],
                "responses": {
                    "200": _json(_ref("Health"), "Ready"),
                    "503": _json(_ref("Health"), "Starting"),
                },
            }
        },
        "/api/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first, filtered and paginated",
                "tags": ["jobs"],
                "parameters": [
                    _query("state", states, "Only jobs in these states."),
                    _query(
                        "queue", {"type": "string", "pattern": contract.QUEUE_PATTERN}, "Only this queue."
                    ),
                    LIMIT,
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "default": 0},
                        "Skip this many (not with `cursor`).",
                    ),
                    _query("cursor", {"type": "string"}, "`next_cursor` of the previous page."),
                ],
                "responses": {"200": _json(_ref("JobPage"), "A page of jobs"), **ERRORS},
            }
        },
        "/api/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "One job: record, attempts and its stored events",
                "tags": ["jobs"],
                "parameters": [JOB_ID_PARAM],
                "responses": {"200": _json(_ref("JobDetail"), "The job"), **ERRORS, **NOT_FOUND},
            }
        },
        "/api/jobs/{job_id}/log": {
            "get": {
                "operationId": "getJobLog",
                "summary": "An attempt's output (stdout and stderr) from a byte offset. When the log "
                "cannot be read, `error` says why and `tail` has the last lines kept of a failed attempt",
                "tags": ["jobs"],
                "parameters": [
                    JOB_ID_PARAM,
                    _query(
                        "attempt",
                        {"type": "integer", "minimum": 1},
                        "Attempt number (default: the current one).",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "default": 0},
                        "Byte offset: `next_offset` of the previous chunk.",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 262144, "default": 65536},
                        "Bytes to return at most.",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("LogChunk"), "A chunk of the log (or why there is none)"),
                    **ERRORS,
                    "404": _json(_ref("Error"), "No such job, or no such attempt."),
                },
            }
        },
        "/api/jobs/{job_id}/artifacts": {
            "get": {
                "operationId": "listJobArtifacts",
                "summary": "The artifacts of the job's accepted attempt (name, attempt, sha256, size; "
                "`problem` says why one would not be handed out)",
                "tags": ["jobs"],
                "parameters": [JOB_ID_PARAM],
                "responses": {"200": _json(_ref("Artifacts"), "The artifacts"), **ERRORS, **ARTIFACT_ERRORS},
            }
        },
        "/api/jobs/{job_id}/artifacts/{name}": {
            "get": {
                "operationId": "getJobArtifact",
                "summary": "One artifact's bytes, from the accepted attempt only and once checked against "
                "its writer and the SHA-256 its result lists (header `Repr-Digest`)",
                "tags": ["jobs"],
                "parameters": [JOB_ID_PARAM, ARTIFACT_NAME_PARAM],
                "responses": {"200": BYTES, **ERRORS, **ARTIFACT_ERRORS},
            }
        },
        "/api/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Request cancellation (the leader stops the attempt)",
                "tags": ["jobs"],
                "parameters": [JOB_ID_PARAM],
                "responses": {
                    "202": _json(_ref("JobAccepted"), "Cancellation recorded"),
                    **ERRORS,
                    **NOT_FOUND,
                    **MUTATION_ERRORS,
                },
            }
        },
        "/api/nodes": {
            "get": {
                "operationId": "listNodes",
                "summary": "Nodes with readiness and pods, and recent node failures",
                "tags": ["nodes"],
                "responses": {"200": _json(_ref("Nodes"), "Nodes"), **ERRORS},
            }
        },
        "/api/queues": {
            "get": {
                "operationId": "listQueues",
                "summary": "Per queue: depth, jobs by state, retries by reason",
                "tags": ["queues"],
                "parameters": [
                    _query(
                        "window",
                        {"type": "integer", "minimum": 60, "maximum": 604800, "default": 900},
                        "Seconds covered by retry_timeline.",
                    )
                ],
                "responses": {"200": _json(_ref("Queues"), "Queues"), **ERRORS},
            }
        },
        "/api/dead-letters": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Dead letters, newest first",
                "tags": ["dead letters"],
                "parameters": [
                    LIMIT,
                    _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Skip this many."),
                    _query(
                        "reason", {"enum": [r.value for r in contract.FailureReason]}, "Only this reason."
                    ),
                ],
                "responses": {"200": _json(_ref("DeadLetters"), "Dead letters"), **ERRORS},
            }
        },
        "/api/dead-letters/{seq}/original": {
            "get": {
                "operationId": "getDeadLetterOriginal",
                "summary": "The whole original message of a dead letter (a letter carries an excerpt)",
                "tags": ["dead letters"],
                "parameters": [
                    {
                        "name": "seq",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The original bytes",
                        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                    },
                    **ERRORS,
                    "404": _json(_ref("Error"), "No such dead letter, or its original expired."),
                },
            }
        },
        "/api/dead-letters/{job_id}/retry": {
            "post": {
                "operationId": "retryDeadLetter",
                "summary": "Re-drive a dead job with fresh retry budgets",
                "tags": ["dead letters"],
                "parameters": [JOB_ID_PARAM],
                "responses": {
                    "202": _json(_ref("JobAccepted"), "Queued again"),
                    **ERRORS,
                    **NOT_FOUND,
                    **MUTATION_ERRORS,
                },
            }
        },
        "/api/events": {
            "get": {
                "operationId": "events",
                "summary": "Server-sent events: `job` (a JobEvent), `node` (readiness "
                "or pod count changed), `lagged` (events were dropped: refetch)",
                "tags": ["events"],
                "parameters": [
                    _query(
                        "job_id",
                        {"type": "string", "pattern": contract.JOB_ID_PATTERN},
                        "Only this job's `job` events.",
                    )
                ],
                "responses": {
                    "200": {
                        "description": "An endless text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **ERRORS,
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["meta"],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobq dispatcher API",
            "version": str(contract.CONTRACT_VERSION),
            "description": "Jobs, nodes, queues, dead letters and live events of a jobq "
            "dispatcher. When a token is configured (JOBQ_HTTP_TOKEN), every route but the "
            "probes and the dashboard page needs `Authorization: Bearer <token>` (/metrics too "
            "unless JOBQ_HTTP_METRICS_OPEN); there is no query-parameter or cookie form. Other "
            "origins may call it only when listed in JOBQ_HTTP_CORS_ORIGINS.",
        },
        "servers": [{"url": "/"}],
        "paths": _secure(paths),
        "security": SECURED,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "JOBQ_HTTP_TOKEN (or the file JOBQ_HTTP_TOKEN_FILE names)",
                }
            },
        },
    }
