"""Optional HTTPS for the HTTP API: JOBQ_HTTP_TLS_CERT / JOBQ_HTTP_TLS_KEY, with a generated cert."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from broker import contract, settings
from broker.embedded import nats_tls
from tests.conftest import running_stack


async def test_the_api_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    files = nats_tls.ensure(tmp_path / "https")  # any certificate for 127.0.0.1 will do
    env = {"JOBQ_HTTP_TLS_CERT": str(files.server_cert), "JOBQ_HTTP_TLS_KEY": str(files.server_key)}
    async with running_stack(tmp_path, nodes=0, env=env) as stack, aiohttp.ClientSession() as http:
        assert stack.http_url.startswith("https://127.0.0.1:")
        trusted = contract.client_tls_context(ca_file=str(files.ca_cert))
        async with http.get(f"{stack.http_url}api/queues", headers=stack.http_headers, ssl=trusted) as r:
            assert r.status == 200
        # Plain HTTP to the same port gets no answer; nor does a client that does not trust the CA.
        with pytest.raises(aiohttp.ClientError):
            async with http.get(stack.http_url.replace("https://", "http://") + "readyz") as r:
                await r.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(f"{stack.http_url}readyz") as r:
                await r.read()


def test_cert_and_key_go_together() -> None:
    with pytest.raises(settings.SettingsError, match="both JOBQ_HTTP_TLS_CERT and JOBQ_HTTP_TLS_KEY"):
        settings.Settings.from_env({"JOBQ_HTTP_TLS_CERT": "/etc/jobq/tls.crt"})
