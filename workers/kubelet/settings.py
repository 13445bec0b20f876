"""The kubelet's settings (flags) and the upstream kubelet's cadence constants."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from broker import contract

LEASE_RENEW_FRACTION = 0.25
"""Upstream kubelet: renew interval = leaseDurationSeconds x 0.25."""
LEASE_BACKOFF_S = (0.2, 7.0)
"""Upstream kubelet: a failed Lease update is retried after 0.2 s, doubling up to 7 s."""
JITTER = 0.04
"""Upstream kubelet: wait.JitterUntil(..., 0.04, sliding) for the Lease and status loops."""


@dataclasses.dataclass(frozen=True, slots=True)
class KubeletSettings:
    name: str
    kubeconfig: str
    """Path of the node's kubeconfig (identity system:node:<name>); empty: in-cluster."""
    capacity: contract.Resources
    max_pods: int = 110
    zone: str = ""
    """topology.kubernetes.io/zone; default: the node name (one zone per node, see devcluster README)."""
    lease_duration_s: int = 40
    """``--node-lease-duration-seconds`` (kubelet default 40)."""
    lease_renew_interval_s: float | None = None
    """Seconds between Lease renewals; None: ``lease_duration_s x 0.25`` (10 s), as upstream."""
    node_status_update_frequency_s: float = 10.0
    """``--node-status-update-frequency``: how often the node status is computed (posted if changed)."""
    node_status_report_frequency_s: float = 300.0
    """``--node-status-report-frequency``: an unchanged status is still posted this often."""
    max_grace_s: float = 30.0
    """Upper bound of a deleted pod's grace period, s."""
    work_dir: Path = Path(".jobq/nodes")
    """Pod logs go to <work_dir>/<node>/<pod>.log, pod records to <work_dir>/<node>/pods/."""
    nats_url: str = ""
    """JOBQ_NATS_URL for pods that bring none."""
    python: str = sys.executable
    tls_cert_file: Path | None = None
    """Serving certificate of the log server (SANs 127.0.0.1 and the node name); None: no server."""
    tls_private_key_file: Path | None = None
    client_ca_file: Path | None = None
    """CA that signs the API server's kubelet-client certificate."""

    @property
    def renew_interval_s(self) -> float:
        if self.lease_renew_interval_s is not None:
            return self.lease_renew_interval_s
        return self.lease_duration_s * LEASE_RENEW_FRACTION

    @property
    def node_dir(self) -> Path:
        return self.work_dir / self.name

    @property
    def pods_dir(self) -> Path:
        """Where pod records (``<uid>.json``) and exit files (``<uid>.exit``) live."""
        return self.node_dir / "pods"
