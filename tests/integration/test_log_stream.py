"""One log stream: with JSON logs, every stderr line of the dispatcher, the node agents and
`jobq up` is one JSON object, a library's own logging records (here aiohttp's, with its
traceback) included. Real processes, real nats-server; the evidence is the processes' stderr."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.embedded.stack import Stack

JOBQ = [sys.executable, "-m", "submitter.cli"]
BAD_REQUEST = b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"
"""An HTTP request aiohttp cannot parse: its server logs "Error handling request" with a
traceback on logger aiohttp.server (what a port scanner or a broken proxy provokes)."""


def json_lines(text: str, *, where: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object with level, event and logger (else fail, saying
    which line)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{where} line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict) and {"level", "event", "logger", "timestamp"} <= set(entry), \
            f"{where} line {number}: {line}"
        found.append(entry)
    return found


async def send_bad_request(url: str) -> bytes:
    host, port = url.split("//")[1].rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(BAD_REQUEST)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.mark.timeout(120)
async def test_dispatcher_and_node_stderr_is_one_json_object_a_line(stack: Stack) -> None:
    assert b" 400 Bad Request" in (await send_bad_request(stack.http_url)).split(b"\r\n")[0]
    log = stack.logs / "dispatcher-0.log"
    for _ in range(100):  # the record is written when aiohttp has handled the request
        if "Error handling request" in log.read_text():
            break
        await asyncio.sleep(0.1)
    entries = json_lines(log.read_text(), where=log.name)
    aiohttp_errors = [e for e in entries if e["logger"] == "aiohttp.server"]
    assert len(aiohttp_errors) == 1, aiohttp_errors
    assert aiohttp_errors[0]["level"] == "error"
    assert aiohttp_errors[0]["event"].startswith("Error handling request from 127.0.0.1")
    assert aiohttp_errors[0]["exception"][0]["exc_type"] == "BadHttpMessage"
    assert aiohttp_errors[0]["component"] == "dispatcher"  # the process's context, as on its own events
    assert any(e["logger"].startswith("jobq.") for e in entries)  # jobq's events carry their logger
    for name in stack.nodes:
        json_lines((stack.logs / f"{name}.log").read_text(), where=f"{name}.log")


@pytest.mark.timeout(180)
async def test_jobq_up_stderr_is_one_json_object_a_line(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *JOBQ, "--log-format", "json", "up", "--data-dir", str(tmp_path / "d"), "--nats-port", "-1",
        "--http-port", "0", "--nodes", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "JOBQ_LOG_FORMAT"},
    )
    assert process.stdout is not None
    banner = b""
    try:
        while b"Ctrl-C" not in banner:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line, f"jobq up exited early: {banner!r}"
            banner += line
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr[-2000:]
    entries = json_lines(stderr.decode(), where="jobq up stderr")
    progress = [e["message"] for e in entries if e["event"] == "stack_progress"]
    assert progress[-1] == "stopped" and len(progress) >= 3, entries
