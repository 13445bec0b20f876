"""The OpenAPI document validates, and documents exactly the routes the app serves."""

from __future__ import annotations

import json
import re

from broker.http import openapi, server


def _routes() -> set[tuple[str, str]]:
    return {(method.lower(), re.sub(r"{(\w+):[^}]+}", r"{\1}", path)) for method, path, _ in server.routes()}


def _documented() -> set[tuple[str, str]]:
    return {(method, path) for path, ops in openapi.document()["paths"].items() for method in ops}


def test_openapi_document_validates() -> None:
    doc = openapi.document()
    json.dumps(doc)  # serialisable as served
    assert doc["openapi"].startswith("3.1")
    try:
        from openapi_spec_validator import validate
    except ImportError:  # structural checks only
        validate = None
    if validate is not None:
        validate(doc)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds are unique"
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    assert _routes() == _documented()


def test_path_parameters_match_the_paths() -> None:
    for path, ops in openapi.document()["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == in_path, (path, declared)


def test_issue_routes_are_all_there() -> None:
    required = {
        "/",
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/nodes",
        "/api/queues",
        "/api/dead-letters",
        "/api/events",
        "/api/openapi.json",
    }
    assert required <= {path for _, path in _routes()}


def test_bearer_security_is_declared_where_the_token_is_checked() -> None:
    from broker import settings
    from broker.http import access

    doc = openapi.document()
    assert doc["components"]["securitySchemes"]["bearer"]["type"] == "http"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}, {}]
    configured = settings.HttpSettings(token="t")
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if access.needs_token(path, configured):
                assert op["security"] == [{"bearer": []}, {}], path
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"], path
            else:
                assert op["security"] == [], path
                assert "401" not in op["responses"], path
    assert not access.needs_token("/metrics", settings.HttpSettings(token="t", metrics_open=True))
    assert access.needs_token("", configured)  # a path no route matches
    assert {path for _, path in _documented()} >= access.OPEN_ROUTES


def test_jobs_carry_checkpoints_and_work_lost() -> None:
    schemas = openapi.document()["components"]["schemas"]
    summary = schemas["JobSummary"]["properties"]
    assert "LiveCheckpoint" in json.dumps(summary["checkpoint"]) and "work_lost_s" in summary
    assert {"job_id", "attempt", "written", "step", "at", "resumed_step", "resumed_from_attempt"} == set(
        schemas["LiveCheckpoint"]["properties"]
    )
    attempt = schemas["AttemptView"]["properties"]
    assert "AttemptCheckpoints" in json.dumps(attempt["checkpoints"]) and "work_lost_s" in attempt
