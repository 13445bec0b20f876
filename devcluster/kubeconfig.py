"""Kubeconfig files for the components and the admin user.

Written as JSON (a subset of YAML that kubectl, client-go and kubernetes_asyncio all read),
with the certificates embedded so the file stays valid if the PKI directory moves.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from devcluster.pki import CertPair

CLUSTER_NAME = "jobq-dev"


def render_kubeconfig(*, server: str, ca_cert: Path, client: CertPair, user: str) -> str:
    """A single-context kubeconfig that authenticates with a client certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    return json.dumps(config, indent=2) + "\n"


def write_kubeconfig(path: Path, *, server: str, ca_cert: Path, client: CertPair, user: str) -> Path:
    """Write a kubeconfig readable only by the owner; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_kubeconfig(server=server, ca_cert=ca_cert, client=client, user=user))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
