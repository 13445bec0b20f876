"""What the dev cluster's control plane is made of: component names, the tunables
(``ControlPlaneConfig``) and each component's command line. ``controlplane.ControlPlane`` runs them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.pki import FRONT_PROXY_CLIENT_CN, Pki

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
COMPONENTS = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER)
"""Start order; they are stopped in reverse."""

SERVICE_CIDR = "10.0.0.0/24"


def default_state_dir() -> Path:
    """``$JOBQ_DEV_CLUSTER_DIR`` or ``./.jobq/dev-cluster``."""
    return Path(os.environ.get("JOBQ_DEV_CLUSTER_DIR", ".jobq/dev-cluster"))


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Tunables. Durations are Go duration strings (``"5s"``).

    The node-failure settings default to upstream's (kube-controller-manager and kube-apiserver
    v1.32+), so a dev cluster handles a dead node exactly as a stock cluster does: NotReady about
    50-55 s after the last Lease renewal, pods evicted 300 s later. ``fastest_safe()`` gives the
    quickest settings an operator could choose with stock kubelets.
    """

    state_dir: Path = field(default_factory=default_state_dir)
    cache_dir: Path | None = None
    node_monitor_period: str = "5s"
    """--node-monitor-period: how often the node lifecycle controller checks node health."""
    node_monitor_grace_period: str = "50s"
    """--node-monitor-grace-period: a node silent this long (no Lease renewal, no status) is Unknown."""
    node_startup_grace_period: str = "60s"
    """--node-startup-grace-period: the same for a node that has never been Ready."""
    node_eviction_rate: float = 0.1
    """--node-eviction-rate: nodes per second whose pods are tainted for eviction (per healthy zone)."""
    secondary_node_eviction_rate: float = 0.01
    """--secondary-node-eviction-rate: the rate in a partially disrupted zone (0 in zones of
    50 nodes or fewer)."""
    toleration_seconds: int = 300
    """--default-{not-ready,unreachable}-toleration-seconds for pods without their own."""
    detached: bool = True
    """False: components are killed when the thread that started them dies (for test fixtures)."""
    startup_timeout: float = 120.0
    wait_for_default_service_account: bool = True
    extra_args: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Extra flags per component name, appended last (so they win)."""

    @classmethod
    def fastest_safe(cls, **overrides: Any) -> ControlPlaneConfig:
        """The fastest node-failure settings an operator could safely choose with stock kubelets
        (Lease renewed every 10 s, retried from 0.2 s doubling up to 7 s on failure):

        - grace 20 s: two renew intervals. A renewal that fails is retried 0.2, 0.6, 1.4, 3.0
          and 6.2 s after it was due, all within the grace, so one failed renewal (an apiserver
          blip of a few seconds) never marks a healthy node NotReady; a dead node is NotReady
          20-21 s after its last renewal. At 10-15 s a single late renewal (plus the controller's
          tick) would flap the node and, with 1 s tolerations, evict its pods.
        - monitor period 1 s: detection latency grace + up to 1 s. The check reads the informer
          caches only, so a faster tick costs CPU, not API calls.
        - startup grace 60 s (stock): it only delays the verdict on a node that never became
          Ready; a fresh kubelet posts Ready at registration.
        - tolerations 1 s: pods of a NotReady/unreachable node are evicted (deletionTimestamp)
          1 s after the taint, the shortest positive value; 0 would also evict pods of a node
          that is only briefly NotReady, with no chance to come back.
        - eviction rate 10 nodes/s: the per-zone token bucket no longer delays a second dead
          node by 10 s. The secondary rate stays stock: it is the brake for a zone that is
          partly down, where evicting faster makes things worse.
        """
        values: dict[str, Any] = {
            "node_monitor_period": "1s",
            "node_monitor_grace_period": "20s",
            "node_startup_grace_period": "60s",
            "node_eviction_rate": 10.0,
            "toleration_seconds": 1,
            **overrides,
        }
        return cls(**values)


def etcd_args(etcd: Path, *, state_dir: Path, ports: dict[str, int]) -> list[str]:
    client = f"http://127.0.0.1:{ports['etcd_client']}"
    peer = f"http://127.0.0.1:{ports['etcd_peer']}"
    return [
        str(etcd),
        "--name=jobq",
        f"--data-dir={state_dir / 'etcd-data'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=jobq={peer}",
        "--initial-cluster-state=new",
        "--auto-compaction-retention=1",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_args(binary: Path, *, config: ControlPlaneConfig, pki: Pki, ports: dict[str, int]) -> list[str]:
    tol = config.toleration_seconds
    return [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{ports['etcd_client']}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}",
        f"--cert-dir={pki.directory / 'apiserver-generated'}",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",  # on top of the default set, as kubeadm does
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_public_key}",
        f"--service-account-signing-key-file={pki.sa_private_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--endpoint-reconciler-type=none",  # endpoints may not hold a loopback address
        f"--default-not-ready-toleration-seconds={tol}",
        f"--default-unreachable-toleration-seconds={tol}",
        f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
        f"--proxy-client-key-file={pki.front_proxy_client.key}",
        # pods/log: the apiserver dials the kubelet at the node's InternalIP and
        # daemonEndpoints port, verifies its serving certificate with the cluster CA, and
        # presents the kubelet-client identity.
        f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
        f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
        f"--kubelet-certificate-authority={pki.ca.cert}",
        "--kubelet-preferred-address-types=InternalIP",
        "--profiling=false",
    ]


def controller_manager_args(
    binary: Path, *, config: ControlPlaneConfig, pki: Pki, kubeconfig: Path, ports: dict[str, int]
) -> list[str]:
    cfg = config
    return [
        *_controller_args(binary, kubeconfig=kubeconfig, port=ports["controller_manager"]),
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_private_key}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--node-monitor-period={cfg.node_monitor_period}",
        f"--node-monitor-grace-period={cfg.node_monitor_grace_period}",
        f"--node-startup-grace-period={cfg.node_startup_grace_period}",
        f"--node-eviction-rate={cfg.node_eviction_rate}",
        f"--secondary-node-eviction-rate={cfg.secondary_node_eviction_rate}",
        "--profiling=false",
    ]


def scheduler_args(binary: Path, *, kubeconfig: Path, ports: dict[str, int]) -> list[str]:
    return [*_controller_args(binary, kubeconfig=kubeconfig, port=ports["scheduler"]), "--profiling=false"]


def _controller_args(binary: Path, *, kubeconfig: Path, port: int) -> list[str]:
    """What kube-controller-manager and kube-scheduler are both given first: their identity (one
    kubeconfig for everything), loopback with an HTTPS port, and no leader election."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
    ]
