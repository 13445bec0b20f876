"""NATS TLS in the chart (nats.tls): the CA mounted for the dispatcher and named for task pods,
the bundled servers' TLS block (accepted and enforced by the real nats-server), and the
cert-manager Certificates that can fill the Secrets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker import settings
from broker.embedded import nats_tls
from tests.helm.conftest import CHART, render, run_helm, set_args
from tests.helm.test_chart import OPTIONS, by_kind, dispatcher_env, one
from tests.helm.test_chart_nats_sync import nats_conf, varz_of

pytestmark = pytest.mark.timeout(120)


def test_the_dispatcher_verifies_nats_with_the_mounted_ca(helm: Path) -> None:
    docs = render(helm, OPTIONS["nats-tls-external"])
    env = dispatcher_env(docs)
    assert env["JOBQ_NATS_CA"] == "/etc/jobq/nats-tls/ca.crt"
    assert env["JOBQ_POD_NATS_CA_SECRET"] == "t-jobq-nats-ca"
    config = settings.Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert config.nats.ca_file == "/etc/jobq/nats-tls/ca.crt"
    assert config.backend.pod_nats_ca_secret == "t-jobq-nats-ca"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["nats-tls"]["secret"]["secretName"] == "t-jobq-nats-tls"
    assert volumes["nats-tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never tls.key
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["nats-tls"] == {"name": "nats-tls", "mountPath": "/etc/jobq/nats-tls", "readOnly": True}
    assert not by_kind(docs, "Certificate")
    # Off (the default): none of it.
    plain = render(helm)
    assert "JOBQ_NATS_CA" not in dispatcher_env(plain)


def test_cert_manager_fills_the_servers_secret_and_the_pods_ca(helm: Path) -> None:
    docs = render(helm, OPTIONS["nats-tls-bundled-cert-manager"])
    certs = {
        (c["metadata"]["namespace"], c["metadata"]["name"]): c["spec"] for c in by_kind(docs, "Certificate")
    }
    server = certs[("jobq-system", "t-jobq-nats-tls")]
    assert server["secretName"] == "t-jobq-nats-tls" and "server auth" in server["usages"]
    assert "t-jobq-nats.jobq-system.svc.cluster.local" in server["dnsNames"]
    assert server["issuerRef"] == {"name": "jobq-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    pods_ca = certs[("jobq-jobs", "t-jobq-nats-ca")]
    assert pods_ca["secretName"] == "t-jobq-nats-ca" and pods_ca["issuerRef"] == server["issuerRef"]
    sts = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    mount = {"name": "tls", "mountPath": "/etc/nats-tls", "readOnly": True}
    assert mount in sts["containers"][0]["volumeMounts"]
    assert next(v for v in sts["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "t-jobq-nats-tls"
    # A namespaced Issuer cannot fill a Secret in the jobs namespace: say so, unless given one there.
    issuer = {**OPTIONS["nats-tls-bundled-cert-manager"], "nats.tls.certManager.issuerRef.kind": "Issuer"}
    out = run_helm(helm, "template", "t", str(CHART), *set_args(issuer), check=False)
    assert out.returncode != 0 and "nats.tls.podCaSecret" in out.stderr
    given = render(helm, {**issuer, "nats.tls.podCaSecret": "my-ca"})
    assert [c["metadata"]["name"] for c in by_kind(given, "Certificate")] == ["t-jobq-nats-tls"]
    assert dispatcher_env(given)["JOBQ_POD_NATS_CA_SECRET"] == "my-ca"


def test_bundled_nats_requires_tls_with_the_secrets_files(helm: Path, tmp_path: Path) -> None:
    files = nats_tls.ensure(tmp_path / "issued")
    mounted = tmp_path / "nats-tls"  # as the Secret is mounted: ca.crt, tls.crt, tls.key
    mounted.mkdir()
    shutil.copy(files.ca_cert, mounted / "ca.crt")
    shutil.copy(files.server_cert, mounted / "tls.crt")
    shutil.copy(files.server_key, mounted / "tls.key")
    conf = nats_conf(helm, {"nats.tls.enabled": "true"})
    assert "tls {" in conf
    varz = varz_of(conf.replace("/etc/nats-tls", str(mounted)), tmp_path)
    assert varz["tls_required"] is True and varz["tls_timeout"] == 5
    assert "tls {" not in nats_conf(helm, {})
