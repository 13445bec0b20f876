"""TLS between every jobq process and NATS, on by default in the embedded stack (`jobq up`,
`jobq demo`): against the real nats-server, with the CA the stack generates."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import contract, natsutil
from broker.embedded import nats_tls
from broker.embedded.natsserver import NatsServer, find_binary
from broker.embedded.stack import Stack, StackConfig
from submitter.client import JobqClient
from tests.conftest import FAST_ENV
from workers import pod_runtime

JOBQ = [sys.executable, "-m", "submitter.cli"]


@pytest.fixture
async def dot_jobq_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack whose data dir is ``<tmp>/.jobq``: the CLI run from ``<tmp>`` finds its stack.json."""
    stack = Stack(StackConfig(data_dir=tmp_path / ".jobq", nodes=1, nats_port=-1, http_port=0, env=FAST_ENV))
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()


def without_tls_env() -> dict[str, str]:
    """This process's environment without any NATS URL or CA: the CLI must find them itself."""
    drop = (contract.ENV_NATS_URL, contract.ENV_NATS_CA, contract.ENV_NATS_CERT, contract.ENV_NATS_KEY)
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "JOBQ_LOG_FORMAT": "json"}


def read(path: str | Path) -> str:
    return Path(path).read_text()


async def monitor(stack: Stack, path: str, **params: str) -> dict[str, Any]:
    assert stack.nats is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{stack.nats.monitor_url}/{path}", params=params) as response,
    ):
        response.raise_for_status()
        body: dict[str, Any] = await response.json()
        return body


async def plain_text_hello(url: str) -> bytes:
    """What the server answers a client that skips TLS: CONNECT and PING in plain text."""
    parts = urlsplit(url.split(",")[0])
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        info = await reader.readline()
        assert info.startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


async def test_the_stack_requires_tls_and_refuses_plain_text(dot_jobq_stack: Stack) -> None:
    stack = dot_jobq_stack
    assert stack.nats_url.startswith("tls://") and "BEGIN CERTIFICATE" in read(stack.nats_ca)
    varz = await monitor(stack, "varz")
    assert varz["tls_required"] is True
    answer = await plain_text_hello(stack.nats_url)
    assert b"PONG" not in answer, "the server talked to a plain-text client"
    assert json.loads(read(stack.config.data_dir / "stack.json"))["nats_ca"] == stack.nats_ca


async def test_a_client_without_the_ca_is_refused_with_a_clear_error(
    dot_jobq_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = dot_jobq_stack
    monkeypatch.delenv(contract.ENV_NATS_CA, raising=False)
    with pytest.raises(ConnectionError, match=f"does not verify.*{contract.ENV_NATS_CA}"):
        async with JobqClient(stack.nats_url):
            pass
    # The CLI says it in one line, exit 4 (unreachable), and names what to set.
    elsewhere = tmp_path / "elsewhere"  # no .jobq/stack.json here
    elsewhere.mkdir()
    env = {**without_tls_env(), contract.ENV_NATS_URL: stack.nats_url}
    out = await asyncio.to_thread(
        subprocess.run, [*JOBQ, "list"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60
    )
    lines = out.stderr.splitlines()
    assert out.returncode == 4 and len(lines) == 1, out.stderr
    assert "does not verify" in lines[0] and contract.ENV_NATS_CA in lines[0]
    # A CA file that is not there: one line, exit 1, naming the variable.
    env[contract.ENV_NATS_CA] = str(tmp_path / "no-such-ca.crt")
    out = await asyncio.to_thread(
        subprocess.run, [*JOBQ, "list"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60
    )
    lines = out.stderr.splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert f"{contract.ENV_NATS_CA}=" in lines[0] and "cannot read the CA file" in lines[0]


async def test_a_job_runs_end_to_end_over_tls(dot_jobq_stack: Stack) -> None:
    stack = dot_jobq_stack
    async with JobqClient(stack.nats_url, nats_options=stack.nats_options()) as client:
        handle = await client.submit(task="demo.sleep", args={"seconds": 0.2})
        result = await handle.result(timeout=90)
    assert result.attempt == 1
    # Every connection the server saw (the pod's runner, closed by now, included) spoke TLS.
    open_, closed = (
        await monitor(stack, "connz", limit="1024"),
        await monitor(stack, "connz", state="closed", limit="1024"),
    )
    connections = open_["connections"] + closed["connections"]
    runner = [c for c in connections if c.get("name") == f"jobq-runner {handle.id}.1"]
    assert runner, [c.get("name") for c in connections]
    names = {c.get("name") for c in open_["connections"]}
    assert {"jobq-dispatcher", "jobq-node-node-1", "jobq-stack"} <= names
    assert all(c.get("tls_version") for c in connections), [
        (c.get("name"), c.get("tls_version")) for c in connections
    ]


async def test_the_cli_finds_the_ca_in_stack_json(dot_jobq_stack: Stack, tmp_path: Path) -> None:
    out = await asyncio.to_thread(
        subprocess.run,
        [*JOBQ, "submit", "--task", "demo.sleep", "--args", '{"seconds": 0.1}', "--wait", "--timeout", "90"],
        env=without_tls_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # The stack's servers named with another scheme (nats://) are still the stack's: same CA.
    same = {**without_tls_env(), contract.ENV_NATS_URL: dot_jobq_stack.nats_url.replace("tls://", "nats://")}
    out = await asyncio.to_thread(
        subprocess.run, [*JOBQ, "list"], env=same, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def ports_files(directory: Path) -> list[Path]:
    return list(directory.glob("nats-server_*.ports"))


def issue_client_cert(files: nats_tls.TlsFiles, directory: Path) -> tuple[Path, Path]:
    """A client certificate signed by the stack's CA (what an operator who wants mTLS issues)."""
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobq-test-client")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client.crt", directory / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_a_server_that_asks_for_client_certificates_gets_jobq_nats_cert(tmp_path: Path) -> None:
    """mTLS is not jobq's default, but JOBQ_NATS_CERT/KEY serve a NATS that requires it."""
    files = nats_tls.ensure(tmp_path)
    cert, key = issue_client_cert(files, tmp_path)
    conf = tmp_path / "mtls.conf"
    conf.write_text(nats_tls.tls_block(files, verify_clients=True) + "\n")
    command = [
        find_binary(),
        "-c",
        str(conf),
        "-a",
        "127.0.0.1",
        "-p",
        "-1",
        "--ports_file_dir",
        str(tmp_path),
    ]
    server = await pod_runtime.spawn(command, env={}, log_path=tmp_path / "nats.log")
    try:
        for _ in range(200):
            ports = ports_files(tmp_path)
            if ports:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        url = "tls://" + json.loads(read(ports[0]))["nats"][0].partition("://")[2]
        ca_only = {contract.ENV_NATS_CA: str(files.ca_cert)}
        with pytest.raises(ConnectionError, match="TLS handshake failed") as refused:
            nc = await natsutil.connect(url, name="no-cert", environ=ca_only, reconnect_forever=False)
            await nc.close()  # reached only if the server let it in: the check fails above
        assert "CERTIFICATE_REQUIRED" in str(refused.value)
        with_cert = {**ca_only, contract.ENV_NATS_CERT: str(cert), contract.ENV_NATS_KEY: str(key)}
        nc = await natsutil.connect(url, name="with-cert", environ=with_cert, reconnect_forever=False)
        try:
            await nc.flush(timeout=5)
            assert nc.is_connected
        finally:
            await nc.close()
    finally:
        await pod_runtime.terminate(server, grace_s=5)


async def test_a_client_that_asks_for_tls_refuses_a_plain_text_server(tmp_path: Path) -> None:
    files = nats_tls.ensure(tmp_path)
    server = NatsServer(store_dir=tmp_path / "plain", port=-1)  # no TLS
    url = await server.start()
    try:
        for asked in ({"JOBQ_NATS_CA": str(files.ca_cert)}, {}):
            target = url if asked else url.replace("nats://", "tls://")
            with pytest.raises(ConnectionError, match="does not speak TLS"):
                await natsutil.connect(target, name="asks-tls", environ=asked, reconnect_forever=False)
        nc = await natsutil.connect(url, name="plain", environ={}, reconnect_forever=False)
        await nc.close()  # asking for nothing, plain text is what it gets
    finally:
        await server.stop()
