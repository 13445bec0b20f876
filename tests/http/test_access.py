"""Who may call the HTTP API, against real dispatchers: the bearer token on every class of route,
the open probes and dashboard shell, /metrics open or closed, the cross-origin rules, the
embedded stack's generated token, and `jobq watch` finding it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from broker.embedded.stack import STATE_FILE, TOKEN_FILE, Stack, StackConfig
from tests.conftest import FAST_ENV, running_stack

pytestmark = pytest.mark.slow

TOKEN = "file-token-4c1d9e"
ALLOWED = "https://ops.example.com"
FOREIGN = "https://evil.example"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# (method, path, status with the right token) for each class of route that needs the token.
GUARDED = [
    ("GET", "api/jobs", 200),
    ("GET", "api/jobs/ghost", 404),
    ("GET", "api/jobs/ghost/log", 404),
    ("GET", "api/nodes", 200),
    ("GET", "api/queues", 200),
    ("GET", "api/dead-letters", 200),
    ("GET", "api/dead-letters/7/original", 404),
    ("GET", "api/openapi.json", 200),
    ("GET", "metrics", 200),
    ("POST", "api/jobs/ghost/cancel", 404),
    ("POST", "api/dead-letters/ghost/retry", 404),
    ("GET", "api/nothing", 404),  # unknown routes too: no probing for what exists
]
OPEN = ["healthz", "readyz", "", "static/app.js", "static/style.css"]


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with http.request(method, url, headers=headers or {}) as response:
        body: Any = await response.json() if response.content_type == "application/json" else None
        return response.status, dict(response.headers), body


def _dispatcher_log(stack: Stack) -> str:
    return (stack.logs / "dispatcher-0.log").read_text(errors="replace")


async def _first_event_headers(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> dict[str, str]:
    async with http.get(url, headers=headers) as response:
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"retry:")
        return dict(response.headers)


async def test_token_guards_every_route_but_probes_and_dashboard_shell(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"JOBQ_HTTP_TOKEN_FILE": str(token_file), "JOBQ_HTTP_CORS_ORIGINS": f"{ALLOWED},http://other:3000"}
    async with running_stack(tmp_path, nodes=0, env=env) as stack, aiohttp.ClientSession() as http:
        base = stack.http_url
        assert stack.http_token == TOKEN  # the stack read the same file, generated nothing
        for method, path, ok in GUARDED:
            status, headers, body = await _call(http, method, base + path)
            assert status == 401, (method, path, status)
            assert headers["WWW-Authenticate"].startswith("Bearer"), path
            assert body["error"] == "unauthorized" and "Bearer" in body["message"] and body["param"] is None
            for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
                status, headers, body = await _call(http, method, base + path, {"Authorization": wrong})
                assert status == 401, (method, path, wrong)
                assert headers["WWW-Authenticate"].startswith("Bearer")
            status, _, body = await _call(http, method, base + path, {"Authorization": "Bearer nope"})
            assert body["error"] == "invalid_token", body
            status, _, _ = await _call(http, method, base + path, AUTH)
            assert status == ok, (method, path, status)
        for path in OPEN:
            async with http.get(base + path) as response:
                assert response.status == 200, path
        async with http.get(f"{base}api/events") as response:
            assert response.status == 401
        for trick in ("static/..%2Fapi%2Fjobs", "static/%2e%2e/api/jobs", "api/jobs/", "healthz/../api/jobs"):
            async with http.get(URL(base + trick, encoded=True)) as response:
                assert response.status in (401, 404) and b'"jobs"' not in await response.read(), trick
        await _first_event_headers(http, f"{base}api/events", AUTH)

        # --- cross-origin ------------------------------------------------------------------
        status, headers, _ = await _call(http, "GET", f"{base}api/jobs", {**AUTH, "Origin": ALLOWED})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == ALLOWED
        assert headers["Vary"] == "Origin" and "Access-Control-Allow-Credentials" not in headers
        status, headers, _ = await _call(http, "GET", f"{base}api/jobs", {"Origin": ALLOWED})
        assert status == 401 and headers["Access-Control-Allow-Origin"] == ALLOWED  # the page can read why
        stream = await _first_event_headers(http, f"{base}api/events", {**AUTH, "Origin": ALLOWED})
        assert stream["Access-Control-Allow-Origin"] == ALLOWED
        for origin in (FOREIGN, "https://ops.example.com.evil.example", "http://ops.example.com"):
            status, headers, _ = await _call(http, "GET", f"{base}api/jobs", {**AUTH, "Origin": origin})
            assert status == 200 and "Access-Control-Allow-Origin" not in headers, origin
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        status, headers, _ = await _call(
            http, "OPTIONS", f"{base}api/jobs/ghost/cancel", {**preflight, "Origin": ALLOWED}
        )
        assert status == 204 and headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "Authorization" in headers["Access-Control-Allow-Headers"]
        assert "POST" in headers["Access-Control-Allow-Methods"]
        status, headers, body = await _call(
            http, "OPTIONS", f"{base}api/jobs/ghost/cancel", {**preflight, "Origin": FOREIGN}
        )
        assert status == 403 and body["error"] == "forbidden"
        assert not any(h.startswith("Access-Control-") for h in headers)
        cancel = f"{base}api/jobs/ghost/cancel"
        assert (await _call(http, "POST", cancel, {**AUTH, "Origin": ALLOWED}))[0] == 404  # got through
        assert (await _call(http, "POST", cancel, {**AUTH, "Origin": FOREIGN}))[0] == 403
        assert (await _call(http, "POST", cancel, {**AUTH, "Origin": base.rstrip("/")}))[0] == 404

        log = _dispatcher_log(stack)
        assert "http_refused" in log and "http_api_token_required" in log and "http_api_open" not in log
        assert TOKEN not in log, "the token was logged"


async def test_metrics_open_setting(tmp_path: Path) -> None:
    env = {"JOBQ_HTTP_TOKEN": TOKEN, "JOBQ_HTTP_METRICS_OPEN": "1"}
    async with running_stack(tmp_path, nodes=0, env=env) as stack, aiohttp.ClientSession() as http:
        async with http.get(f"{stack.http_url}metrics") as response:
            assert response.status == 200 and "jobq_leader" in await response.text()
        assert (await _call(http, "GET", f"{stack.http_url}api/queues"))[0] == 401
        assert (await _call(http, "GET", f"{stack.http_url}api/queues", AUTH))[0] == 200


async def test_no_token_leaves_the_api_open_and_says_so(tmp_path: Path) -> None:
    async with (
        running_stack(tmp_path, nodes=0, env={"JOBQ_HTTP_TOKEN": ""}) as stack,
        aiohttp.ClientSession() as http,
    ):
        assert stack.http_token == "" and not (stack.config.data_dir / TOKEN_FILE).exists()
        base = stack.http_url
        for method, path, ok in GUARDED:
            if method == "GET":
                assert (await _call(http, method, base + path))[0] == ok, path
        assert (await _call(http, "POST", f"{base}api/jobs/ghost/cancel"))[0] == 404
        status, headers, _ = await _call(http, "GET", f"{base}api/jobs", {"Origin": FOREIGN})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers  # same-origin only
        assert (await _call(http, "POST", f"{base}api/jobs/ghost/cancel", {"Origin": FOREIGN}))[0] == 403
        status, headers, _ = await _call(
            http, "OPTIONS", f"{base}api/jobs", {"Origin": FOREIGN, "Access-Control-Request-Method": "GET"}
        )
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
        warnings = [
            json.loads(line) for line in _dispatcher_log(stack).splitlines() if "http_api_open" in line
        ]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning", warnings


async def test_embedded_stack_generates_a_token_and_watch_finds_it(tmp_path: Path) -> None:
    async with running_stack(tmp_path, nodes=0) as stack, aiohttp.ClientSession() as http:
        path = stack.config.data_dir / TOKEN_FILE
        assert path.read_text().strip() == stack.http_token and len(stack.http_token) >= 40
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        state_text = (stack.config.data_dir / STATE_FILE).read_text()
        assert stack.http_token not in state_text
        assert json.loads(state_text)["http_token_file"] == str(path.resolve())
        assert stack.dashboard_url == f"{stack.http_url}#token={stack.http_token}"
        base = stack.http_url
        assert (await _call(http, "GET", f"{base}api/jobs"))[0] == 401
        assert (await _call(http, "GET", f"{base}api/jobs", stack.http_headers))[0] == 200
        assert stack.http_token not in _dispatcher_log(stack)

        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_HTTP")}
        watch = [sys.executable, "-m", "submitter.cli", "watch", "--once"]
        proc = await asyncio.create_subprocess_exec(
            *watch,
            "--data-dir",
            str(stack.config.data_dir),
            env={**env, "COLUMNS": "160"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "leader" in out.decode() and base in out.decode()
        # Another server's address never gets the stack's token; without one, a clear message.
        proc = await asyncio.create_subprocess_exec(
            *watch,
            "--url",
            base.replace("127.0.0.1", "localhost"),
            "--data-dir",
            str(stack.config.data_dir),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0 and "JOBQ_HTTP_TOKEN" in err.decode(), err.decode()


async def test_stack_reuses_its_token_and_prints_the_dashboard_link(tmp_path: Path) -> None:
    printed: list[str] = []
    first = Stack(running_stack_config(tmp_path), progress=printed.append)
    try:
        await first.start()
        token = first.http_token
    finally:
        await first.stop()
    assert any(f"#token={token}" in line and TOKEN_FILE in line for line in printed), printed
    again = Stack(running_stack_config(tmp_path))
    try:
        await again.start()
        assert again.http_token == token  # a browser tab that has it keeps working
    finally:
        await again.stop()


def running_stack_config(tmp_path: Path) -> StackConfig:
    return StackConfig(data_dir=tmp_path / "stack", nodes=0, nats_port=-1, http_port=0, env=FAST_ENV)


def test_token_settings(tmp_path: Path) -> None:
    from broker import settings

    def read(**env: str) -> settings.HttpSettings:
        return settings.Settings.from_env(env).http

    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\nignored second line\n")
    assert read(JOBQ_HTTP_TOKEN_FILE=str(path)).token == TOKEN
    assert TOKEN not in repr(read(JOBQ_HTTP_TOKEN=TOKEN))
    assert read().token == "" and not read().metrics_open and read().cors_origins == ()
    assert read(JOBQ_HTTP_CORS_ORIGINS=f"{ALLOWED}/, http://a:1").cors_origins == (ALLOWED, "http://a:1")
    (tmp_path / "empty").write_text("\n")
    for env, words in [
        ({"JOBQ_HTTP_TOKEN": TOKEN, "JOBQ_HTTP_TOKEN_FILE": str(path)}, "not both"),
        ({"JOBQ_HTTP_TOKEN_FILE": str(tmp_path / "empty")}, "is empty"),
        ({"JOBQ_HTTP_TOKEN_FILE": str(tmp_path / "missing")}, "cannot be read"),
        ({"JOBQ_HTTP_TOKEN": "two words"}, "whitespace"),
        ({"JOBQ_HTTP_CORS_ORIGINS": "*"}, "no wildcards"),
        ({"JOBQ_HTTP_CORS_ORIGINS": "ops.example.com"}, "scheme://host"),
        ({"JOBQ_HTTP_METRICS_OPEN": "maybe"}, "JOBQ_HTTP_METRICS_OPEN"),
    ]:
        with pytest.raises(settings.SettingsError, match=words):
            read(**env)
