"""TLS towards NATS: the embedded stack's CA and server certificate (kept, reused, issued again),
the client's SSL context from the environment, and the CA handed to task pods."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from broker import contract, settings
from broker.backends import k8s_objects
from broker.dispatcher import pod_spec as pod_specs
from broker.dispatcher.limits import Limits
from broker.embedded import nats_tls
from broker.embedded.natsserver import config_text
from workers import pod_env

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(path: Path) -> set[str]:
    ext = cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in ext}


def test_ensure_issues_a_ca_and_a_server_certificate_for_loopback(tmp_path: Path) -> None:
    files = nats_tls.ensure(tmp_path, now=NOW)
    assert files.directory == tmp_path / "tls"
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sans(files.server_cert) == {str(ipaddress.ip_address("127.0.0.1")), "localhost"}
    cert(files.server_cert).verify_directly_issued_by(cert(files.ca_cert))
    # A real TLS client trusts it for 127.0.0.1 (hostname checked): the context verifies.
    context = contract.client_tls_context(ca_file=str(files.ca_cert))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_ensure_reuses_what_still_fits_and_issues_again_what_does_not(tmp_path: Path) -> None:
    first = nats_tls.ensure(tmp_path, now=NOW)
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    again = nats_tls.ensure(tmp_path, now=NOW + dt.timedelta(days=1))
    assert (again.ca_cert.read_bytes(), again.server_cert.read_bytes()) == (ca, server)
    # Other hosts: a new server certificate from the same CA.
    nats_tls.ensure(tmp_path, hosts=["nats.example", "10.0.0.7"], now=NOW)
    assert first.ca_cert.read_bytes() == ca and first.server_cert.read_bytes() != server
    assert {"nats.example", "10.0.0.7", "localhost", "127.0.0.1"} == sans(first.server_cert)
    # Near its end (less than RENEW_BEFORE left): issued again.
    server = first.server_cert.read_bytes()
    late = NOW + nats_tls.SERVER_VALIDITY - nats_tls.RENEW_BEFORE + dt.timedelta(days=1)
    nats_tls.ensure(tmp_path, hosts=["nats.example", "10.0.0.7"], now=late)
    assert first.server_cert.read_bytes() != server and first.ca_cert.read_bytes() == ca
    # A CA whose key is gone: a new CA, and a server certificate it signed.
    first.ca_key.unlink()
    nats_tls.ensure(tmp_path, now=NOW)
    assert first.ca_cert.read_bytes() != ca
    cert(first.server_cert).verify_directly_issued_by(cert(first.ca_cert))


def test_the_server_config_requires_tls_only_when_asked(tmp_path: Path) -> None:
    files = nats_tls.ensure(tmp_path, now=NOW)
    text = config_text(sync_always=True, tls=files)
    assert f'cert_file: "{files.server_cert}"' in text and "timeout: 5" in text and "verify" not in text
    assert "tls {" not in config_text(sync_always=True)
    assert "verify: true" in nats_tls.tls_block(files, verify_clients=True)


@pytest.mark.parametrize(("value", "on"), [("", True), ("on", True), ("off", False), ("0", False)])
def test_jobq_nats_tls_switch(value: str, on: bool) -> None:
    assert nats_tls.enabled_from_env({"JOBQ_NATS_TLS": value}) is on


def test_jobq_nats_tls_refuses_other_values() -> None:
    with pytest.raises(ValueError, match="JOBQ_NATS_TLS='maybe'"):
        nats_tls.enabled_from_env({"JOBQ_NATS_TLS": "maybe"})


def test_client_options_from_the_environment(tmp_path: Path) -> None:
    files = nats_tls.ensure(tmp_path, now=NOW)
    assert contract.nats_tls_options({}) == {}
    options = contract.nats_tls_options({contract.ENV_NATS_CA: str(files.ca_cert)})
    assert isinstance(options["tls"], ssl.SSLContext)
    with pytest.raises(contract.NatsTlsError, match=r"JOBQ_NATS_CA=.*cannot read the CA file"):
        contract.nats_tls_options({contract.ENV_NATS_CA: str(tmp_path / "missing.crt")})
    with pytest.raises(contract.NatsTlsError, match="holds no PEM CA certificate"):
        contract.nats_tls_options({contract.ENV_NATS_CA: str(files.server_key)})
    with pytest.raises(contract.NatsTlsError, match="JOBQ_NATS_KEY is set without JOBQ_NATS_CERT"):
        contract.nats_tls_options({contract.ENV_NATS_KEY: str(files.server_key)})
    both = {
        contract.ENV_NATS_CA: str(files.ca_cert),
        contract.ENV_NATS_CERT: str(files.server_cert),
        contract.ENV_NATS_KEY: str(files.server_key),
    }
    assert isinstance(contract.nats_tls_options(both)["tls"], ssl.SSLContext)


def test_a_verification_failure_is_described_in_one_line() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate in certificate chain"
    said = contract.describe_tls_failure(error, "tls://127.0.0.1:4222")
    assert said is not None and "self-signed" in said and contract.ENV_NATS_CA in said
    assert contract.describe_tls_failure(OSError("refused"), "tls://127.0.0.1:4222") is None


def _pod(limits: Limits) -> contract.PodSpec:
    spec = contract.JobSpec.model_validate({"id": "j1", "task": "demo.sleep"})
    record = contract.JobRecord(spec=spec, submitted_at=NOW, updated_at=NOW)
    return pod_specs.build(record, contract.Attempt(number=1, pod="job-j1-1", created_at=NOW), limits)


def _env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in manifest["spec"]["containers"][0]["env"]}


def test_pods_get_the_dispatchers_ca_or_on_kubernetes_the_mounted_secret() -> None:
    config = settings.Settings.from_env(
        {
            "JOBQ_NATS_URL": "tls://nats:4222",
            "JOBQ_NATS_CA": "/etc/jobq/ca.crt",
            "JOBQ_POD_NATS_CA_SECRET": "jobq-nats-ca",
        }
    )
    limits = Limits.from_settings(config)
    spec = _pod(limits)
    assert spec.env[contract.ENV_NATS_CA] == "/etc/jobq/ca.crt"  # embedded and dev cluster: same files
    assert contract.ENV_NATS_CA not in _pod(Limits(nats_url="nats://nats:4222")).env
    plain = k8s_objects.pod_manifest(spec, namespace="jobs", image="jobq")
    assert _env(plain)[contract.ENV_NATS_CA] == "/etc/jobq/ca.crt" and "volumes" not in plain["spec"]
    pod = k8s_objects.pod_manifest(
        spec,
        namespace="jobs",
        image="jobq",
        nats_secret="jobq-pod-nats",
        nats_ca_secret=config.backend.pod_nats_ca_secret,
    )
    assert _env(pod)[contract.ENV_NATS_CA] == contract.POD_NATS_CA_PATH
    volumes = {v["name"]: v["secret"] for v in pod["spec"]["volumes"]}
    assert volumes[k8s_objects.NATS_CA_VOLUME] == {
        "secretName": "jobq-nats-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert k8s_objects.NATS_SECRET_VOLUME in volumes  # the credentials' volume is kept
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[k8s_objects.NATS_CA_VOLUME] == {
        "name": "nats-ca",
        "mountPath": "/etc/jobq/nats-ca",
        "readOnly": True,
    }
    with pytest.raises(settings.SettingsError, match="JOBQ_POD_NATS_CA_SECRET"):
        settings.Settings.from_env({"JOBQ_POD_NATS_CA_SECRET": "Not_A_Name"})


def test_a_pod_without_a_nats_url_in_its_spec_gets_the_agents_url_and_ca(tmp_path: Path) -> None:
    agent = {"default_nats_url": "tls://127.0.0.1:4222", "default_nats_ca": "/stack/tls/ca.crt"}
    bare = pod_env.pod_env({}, {}, home=tmp_path, node_keys={}, **agent)
    assert bare[contract.ENV_NATS_CA] == "/stack/tls/ca.crt"
    # The spec's own URL comes with the spec's own CA, or none: never the agent's for another server.
    spec = {contract.ENV_NATS_URL: "tls://other:4222"}
    own = pod_env.pod_env({}, spec, home=tmp_path, node_keys={}, **agent)
    assert contract.ENV_NATS_CA not in own
