"""Every API route against a real stack: reads, pagination, bad parameters, token, SSE."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import aiohttp
import pytest

from broker import contract
from broker.embedded.stack import Stack
from broker.http import openapi
from tests.conftest import submitter_client
from tests.http.conftest import TOKEN
from tests.http.helpers import eventually, get_json

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _error(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    status: int,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    async with http.request(method, url, headers=headers) as response:
        assert response.status == status, (url, response.status, await response.text())
        assert response.content_type == "application/json"
        body: dict[str, Any] = await response.json()
    assert body["error"] and body["message"], body
    if param is not None:
        assert body["param"] == param, body
    return body


async def _sse_until(
    http: aiohttp.ClientSession, url: str, predicate: Any, *, timeout: float = 30
) -> list[Any]:
    """Read server-sent events until ``predicate(event_name, data)``; returns them all."""
    seen: list[Any] = []
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        name = None
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                data = json.loads(line[6:])
                seen.append((name, data))
                if predicate(name, data):
                    return seen
    raise AssertionError(f"stream ended before the expected event; saw {seen}")


async def test_api_routes(token_stack: Stack) -> None:
    stack, base = token_stack, token_stack.http_url
    async with (
        submitter_client(stack) as client,
        aiohttp.ClientSession(headers=AUTH) as http,
        aiohttp.ClientSession() as anon,
    ):
        quick = [f"ok-{i}" for i in range(5)]
        for job_id in quick:
            await client.submit({"id": job_id, "task": "demo.sleep", "args": {"seconds": 0.1}})
        await client.submit(
            {
                "id": "doomed",
                "task": "demo.exit",
                "args": {"code": 1},
                "queue": "batch",
                "retry": {"max_attempts": 1},
            }
        )
        await client.submit({"id": "long", "task": "demo.sleep", "args": {"seconds": 60}})
        await client.wait([*quick, "doomed"], timeout=60)

        # --- probes, metrics, OpenAPI --------------------------------------------------------
        assert (await get_json(http, f"{base}healthz"))["status"] == "ok"
        ready = await get_json(http, f"{base}readyz")
        assert ready["leader"] is True and ready["nats_connected"] is True
        async with http.get(f"{base}metrics") as response:
            assert "jobq_jobs_submitted_total" in await response.text()
        assert await get_json(http, f"{base}api/openapi.json") == json.loads(json.dumps(openapi.document()))

        async with http.get(base) as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        async with http.get(f"{base}static/app.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        async with http.get(f"{base}static/secrets.txt") as response:
            assert response.status == 404

        # --- /api/jobs: filters and both kinds of pagination ---------------------------------
        listing = await get_json(http, f"{base}api/jobs")
        assert listing["total"] == 7 and {j["id"] for j in listing["jobs"]} == {*quick, "doomed", "long"}
        stamps = [j["submitted_at"] for j in listing["jobs"]]
        assert stamps == sorted(stamps, reverse=True)
        succeeded = await get_json(http, f"{base}api/jobs?state=succeeded")
        assert {j["id"] for j in succeeded["jobs"]} == set(quick)
        both = await get_json(http, f"{base}api/jobs?state=dead,running&queue=batch")
        assert [j["id"] for j in both["jobs"]] == ["doomed"] and both["jobs"][0]["phase"] == "dead"
        paged, cursor = [], None
        while True:
            page = await get_json(http, f"{base}api/jobs?limit=3" + (f"&cursor={cursor}" if cursor else ""))
            paged += [j["id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert paged == [j["id"] for j in listing["jobs"]]
        offset = await get_json(http, f"{base}api/jobs?limit=2&offset=5")
        assert [j["id"] for j in offset["jobs"]] == paged[5:7] and offset["next_cursor"] is None
        for bad, param in [
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("limit=501", "limit"),
            ("offset=-1", "offset"),
            ("state=bogus", "state"),
            ("queue=Not_A_Queue", "queue"),
            ("cursor=%25%25", "cursor"),
            ("cursor=abc&offset=1", "cursor"),
            ("colour=red", "colour"),
            ("limit=1&limit=2", "limit"),
        ]:
            await _error(http, "GET", f"{base}api/jobs?{bad}", status=400, param=param)

        # --- /api/jobs/{id}: record, attempts, events -----------------------------------------
        detail = await get_json(http, f"{base}api/jobs/doomed")
        assert detail["job"]["phase"] == "dead" and detail["record"]["spec"]["id"] == "doomed"
        assert [a["state"] for a in detail["attempts"]] == ["failed"]
        assert detail["attempts"][0]["reason"] == "app_error"
        types = [e["type"] for e in detail["events"]]
        assert types[0] == "accepted" and "attempt_failed" in types and types[-1] == "dead"
        await _error(http, "GET", f"{base}api/jobs/nope", status=404)
        await _error(http, "GET", f"{base}api/jobs/Bad_Id", status=400, param="job_id")

        # --- nodes, queues, dead letters ----------------------------------------------------------
        nodes = await get_json(http, f"{base}api/nodes")
        assert sorted(n["name"] for n in nodes["nodes"]) == sorted(stack.nodes)
        assert all(n["ready"] for n in nodes["nodes"]) and nodes["failures"] == []
        assert sum(n["running_attempts"] for n in nodes["nodes"]) == 1  # "long"
        queues = await get_json(http, f"{base}api/queues")
        by_name = {q["queue"]: q for q in queues["queues"]}
        assert by_name["default"]["jobs"]["succeeded"] == 5 and by_name["default"]["running"] == 1
        assert by_name["batch"]["jobs"]["dead"] == 1 and by_name["batch"]["depth"] == 0
        assert queues["totals"]["succeeded"] == 5 and queues["dead_letters"] == 1
        await _error(http, "GET", f"{base}api/queues?window=5", status=400, param="window")
        letters = await get_json(http, f"{base}api/dead-letters")
        assert letters["total"] == 1
        [letter] = letters["dead_letters"]
        assert letter["job_id"] == "doomed" and letter["reason"] == "app_error" and letter["retryable"]
        async with http.get(f"{base}api/dead-letters/{letter['seq']}/original") as response:
            assert response.status == 200 and response.content_type == "application/octet-stream"
            original = await response.read()
        assert json.loads(original)["id"] == "doomed" and len(original) == letter["size"]
        await _error(http, "GET", f"{base}api/dead-letters/999999/original", status=404)
        await _error(http, "GET", f"{base}api/dead-letters/abc/original", status=400, param="seq")
        assert (await get_json(http, f"{base}api/dead-letters?reason=timeout"))["dead_letters"] == []
        await _error(http, "GET", f"{base}api/dead-letters?reason=gremlins", status=400, param="reason")
        await _error(http, "GET", f"{base}api/nodes?x=1", status=400, param="x")

        # --- mutations need the token (every class of route: tests/http/test_access.py) --------
        cancel = f"{base}api/jobs/long/cancel"
        body = await _error(anon, "POST", cancel, status=401)
        assert "Bearer" in body["message"]
        async with anon.post(cancel) as response:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        await _error(http, "POST", cancel, status=401, headers={"Authorization": "Bearer wrong"})
        await _error(http, "POST", cancel, status=403, headers={**AUTH, "Origin": "http://evil.example"})
        await _error(http, "POST", f"{base}api/jobs/ghost/cancel", status=404, headers=AUTH)
        await _error(http, "POST", f"{base}api/jobs/ok-0/cancel", status=409, headers=AUTH)
        async with http.post(cancel, headers=AUTH) as response:
            assert response.status == 202
            assert (await response.json())["job"]["cancel_requested"] is True
        record = (await client.wait(["long"], timeout=30))["long"]
        assert record.phase == contract.JobPhase.CANCELLED

        retry = f"{base}api/dead-letters/doomed/retry"
        await _error(anon, "POST", retry, status=401)
        await _error(http, "POST", f"{base}api/dead-letters/ok-1/retry", status=409, headers=AUTH)
        await _error(http, "POST", f"{base}api/dead-letters/ghost/retry", status=404, headers=AUTH)

        # --- SSE: the re-driven job's events arrive live ----------------------------------------
        stream = asyncio.create_task(
            _sse_until(
                http,
                f"{base}api/events?job_id=doomed",
                lambda name, data: name == "job" and data["type"] == "dead",
            )
        )
        await asyncio.sleep(0.5)
        async with http.post(retry, headers=AUTH) as response:
            assert response.status == 202 and (await response.json())["job"]["phase"] == "queued"
        seen = await stream
        assert {data["job_id"] for name, data in seen if name == "job"} == {"doomed"}
        assert next(d["type"] for n, d in seen if n == "job") == "attempt_created"

        async def two_letters() -> bool:
            return (await get_json(http, f"{base}api/dead-letters"))["total"] == 2

        await eventually(two_letters, what="a second dead letter")
        await _error(http, "GET", f"{base}api/events?job_id=NOPE", status=400, param="job_id")

        # --- unknown routes and methods answer in JSON ------------------------------------------
        await _error(http, "GET", f"{base}api/nothing", status=404)
        await _error(http, "POST", f"{base}api/jobs", status=405)

        # --- `jobq watch --once` prints the same numbers -----------------------------------------
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "submitter.cli",
            "watch",
            "--once",
            "--url",
            base,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "160", "JOBQ_HTTP_TOKEN": TOKEN},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        for expected in ("default", "batch", "succeeded", *stack.nodes, "doomed", "leader"):
            assert expected in text, (expected, text)
