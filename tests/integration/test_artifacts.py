"""Artifacts listed and downloaded through the SDK, `jobq artifacts` and the HTTP API, against
real servers: the accepted attempt's only, and only bytes with the digest its result lists."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.api
import pytest
from nats.aio.client import Client as NATS
from yarl import URL

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import ArtifactNotFound, JobNotFound, JobqClient, OutputRejected
from tests.conftest import cli_env
from tests.integration.helpers import wait_running

JOBQ = [sys.executable, "-m", "submitter.cli"]


async def jobq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(subprocess.run, [*JOBQ, *args], env=env, capture_output=True, timeout=60)


async def in_store(nc: NATS, key: str) -> tuple[bytes, nats.js.api.ObjectInfo]:
    """An object as the object store holds it: the evidence readers are judged by."""
    got = await (await nc.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)).get(key)
    return bytes(got.data or b""), got.info


async def put_object(nc: NATS, key: str, data: bytes, writer: contract.Writer) -> None:
    """Write an object as another pod could (NATS cannot scope object names); the operator
    stands in for that pod."""
    store = await nc.jetstream().object_store(contract.OBJECT_STORE_ARTIFACTS)
    await store.put(key, data, meta=nats.js.api.ObjectMeta(headers=writer.object_headers()))


async def http_get(stack: Stack, path: str) -> tuple[int, str, bytes]:
    """GET a path given already percent-encoded, as a hostile client would send it."""
    async with (
        aiohttp.ClientSession(headers=stack.http_headers) as http,
        http.get(URL(f"{stack.http_url}{path}", encoded=True)) as response,
    ):
        return response.status, response.content_type, await response.read()


async def test_artifacts_of_the_accepted_attempt_via_sdk_cli_and_api(
    stack: Stack, client: JobqClient, tmp_path: Path
) -> None:
    assert stack.nc is not None
    env = cli_env(stack)
    trained = await client.submit(task="sklearn.train", args={"dataset": "iris", "model": "knn"})
    result = await trained.result(timeout=120)
    key = contract.artifact_key(trained.id, 1, "model.pkl")
    stored, info = await in_store(stack.nc, key)
    assert stored[:1] == b"\x80" and result.artifacts == {"model.pkl": contract.artifact_digest(stored)}

    # --- the list: name, size, sha256, attempt ------------------------------------------------
    listed = await client.artifacts(trained.id)
    assert [(a.name, a.size, "sha256:" + a.sha256, a.attempt, a.problem) for a in listed] == [
        ("model.pkl", info.size, contract.artifact_digest(stored), 1, "")
    ]
    cli_list = await jobq(env, "artifacts", "list", trained.id, "--json")
    assert cli_list.returncode == 0, cli_list.stderr
    assert json.loads(cli_list.stdout) == [a.model_dump(mode="json") for a in listed]
    plain = await jobq(env, "artifacts", "list", trained.id)
    hex_digest = contract.artifact_digest(stored).removeprefix("sha256:").encode()
    assert plain.stdout.startswith(b"NAME ") and b"model.pkl" in plain.stdout and hex_digest in plain.stdout
    status, kind, body = await http_get(stack, f"api/jobs/{trained.id}/artifacts")
    assert status == 200 and kind == "application/json"
    assert json.loads(body) == {
        "job_id": trained.id,
        "attempt": 1,
        "artifacts": [a.model_dump(mode="json") for a in listed],
    }

    # --- the bytes: equal to what the object store holds ---------------------------------------
    assert await client.artifact(trained.id, "model.pkl") == stored
    out = tmp_path / "model.pkl"
    got = await jobq(env, "artifacts", "get", trained.id, "model.pkl", "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == stored
    to_stdout = await jobq(env, "artifacts", "get", trained.id, "model.pkl")
    assert to_stdout.returncode == 0 and to_stdout.stdout == stored
    status, kind, body = await http_get(stack, f"api/jobs/{trained.id}/artifacts/model.pkl")
    assert (status, kind, body) == (200, "application/octet-stream", stored)

    # --- another attempt's object of the same name is never served ----------------------------
    stale = contract.Writer(pod=contract.pod_name(trained.id, 2), pod_uid="stale-attempt")
    await put_object(stack.nc, contract.artifact_key(trained.id, 2, "model.pkl"), b"\x80stale", stale)
    await put_object(stack.nc, contract.artifact_key(trained.id, 2, "extra.bin"), b"extra", stale)
    assert await client.artifacts(trained.id) == listed
    assert await client.artifact(trained.id, "model.pkl") == stored
    with pytest.raises(ArtifactNotFound, match=r"stored no artifact 'extra\.bin'"):
        await client.artifact(trained.id, "extra.bin")
    assert (await http_get(stack, f"api/jobs/{trained.id}/artifacts/model.pkl"))[2] == stored
    status, _, body = await http_get(stack, f"api/jobs/{trained.id}/artifacts/extra.bin")
    assert status == 404 and "stored no artifact 'extra.bin'" in json.loads(body)["message"]
    got = await jobq(env, "artifacts", "get", trained.id, "model.pkl")
    assert got.returncode == 0 and got.stdout == stored

    # --- an overwrite of the accepted attempt's object (other bytes) is refused by every reader --
    assert result.writer is not None
    await put_object(stack.nc, key, b"\x80forged", result.writer)
    (forged,) = await client.artifacts(trained.id)
    assert forged.problem.startswith("its bytes are not those attempt 1 saved") and forged.size == 7
    with pytest.raises(OutputRejected, match="not those attempt 1 saved"):
        await client.artifact(trained.id, "model.pkl")
    status, _, body = await http_get(stack, f"api/jobs/{trained.id}/artifacts/model.pkl")
    assert status == 409 and json.loads(body)["error"] == "rejected"
    got = await jobq(env, "artifacts", "get", trained.id, "model.pkl", "-o", str(tmp_path / "x"))
    assert got.returncode == 1 and b"not those attempt 1 saved" in got.stderr
    assert not (tmp_path / "x").exists()
    plain = await jobq(env, "artifacts", "list", trained.id)
    assert b"NOT SERVED" in plain.stdout


async def test_no_artifacts_before_success_and_hostile_names(stack: Stack, client: JobqClient) -> None:
    env = cli_env(stack)
    sleeper = await client.submit(task="demo.sleep", args={"seconds": 60})
    await wait_running(client, [sleeper.id], count=1)
    why = "has no accepted result (it is running)"
    with pytest.raises(ArtifactNotFound, match=r"has no accepted result \(it is running\)"):
        await client.artifacts(sleeper.id)
    with pytest.raises(ArtifactNotFound, match=r"has no accepted result"):
        await client.artifact(sleeper.id, "model.pkl")
    for path in (f"api/jobs/{sleeper.id}/artifacts", f"api/jobs/{sleeper.id}/artifacts/model.pkl"):
        status, kind, body = await http_get(stack, path)
        assert (status, kind) == (404, "application/json") and why in json.loads(body)["message"], body
    listed = await jobq(env, "artifacts", "list", sleeper.id)
    assert listed.returncode == 1 and why.encode() in listed.stderr, listed.stderr
    missing = await jobq(env, "artifacts", "get", "no-such-job", "model.pkl")
    assert missing.returncode == 3 and b"no job no-such-job" in missing.stderr
    with pytest.raises(JobNotFound):
        await client.artifacts("no-such-job")
    assert (await http_get(stack, "api/jobs/no-such-job/artifacts"))[0] == 404
    await client.cancel(sleeper.id)

    done = await client.submit(task="demo.sleep", args={"seconds": 0.1})
    await done.result(timeout=60)
    assert await client.artifacts(done.id) == []
    hostile: dict[str, Any] = {
        "..": {400, 404},
        "%2e%2e": {400, 404},
        "..%2f..%2fjobq_jobs": {400, 404},
        "a/../../../etc/passwd": {400, 404},
        "a%2f..%2f..%2fb": {400, 404},
        "x" * 1000: {400},
        "%ff%fe%fd": {400},
        "model.pkl%00": {400},
        "%20": {400},
        "a//b": {400},
        "nothing.bin": {404},
    }
    for name, expected in hostile.items():
        status, kind, body = await http_get(stack, f"api/jobs/{done.id}/artifacts/{name}")
        assert status in expected and kind == "application/json", (name, status, body[:200])
        assert json.loads(body)["message"], name
    status, _, body = await http_get(stack, "api/jobs/NOT..A..JOB/artifacts/x")
    assert status == 400 and json.loads(body)["param"] == "job_id"
    # The API still answers after all of that.
    assert (await http_get(stack, f"api/jobs/{done.id}/artifacts"))[0] == 200
