"""``jobq dev-cluster ...`` (a local Kubernetes control plane with simulated kubelets) and
``jobq kubelet`` (one simulated kubelet). Registered by submitter.commands."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

STATE_DIR_HELP = "Cluster state, logs and kubeconfig (default: $JOBQ_DEV_CLUSTER_DIR or ./.jobq/dev-cluster)."


def _forward(args: list[str], state_dir: Path | None) -> None:
    from broker.devcluster import cli

    code = cli.main([*(["--state-dir", str(state_dir)] if state_dir else []), *args])
    if code:
        sys.exit(code)


def register(cli: click.Group, *, nats_option: Callable[..., Any], resolve_nats: Callable[[str | None], str],
             run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
    state_dir_option = click.option("--state-dir", type=click.Path(path_type=Path), default=None,
                                    help=STATE_DIR_HELP)

    @cli.group("dev-cluster")
    def dev_cluster() -> None:
        """A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler, built once from source) on 127.0.0.1, with simulated kubelets that run
        pods as local processes.

        \b
          jobq dev-cluster up --nodes 3
          jobq demo --backend kubernetes --kubeconfig "$(jobq dev-cluster kubeconfig)"
          jobq dev-cluster down
        """

    @dev_cluster.command("up")
    @click.option("--nodes", default=3, show_default=True, help="Simulated kubelets (nodes).")
    @click.option("--node-cpu", default=4.0, show_default=True, help="CPU cores each node offers.")
    @click.option("--node-memory", default="8Gi", show_default=True, help="Memory each node offers.")
    @click.option("--node-monitor-grace-period", default=None, show_default="50s, as upstream",
                  help="kube-controller-manager: how long a silent node stays Ready (overrides the "
                       "grace period of --fastest-safe-node-failure too).")
    @click.option("--fastest-safe-node-failure", is_flag=True,
                  help="The fastest safe node-failure settings instead of upstream's: grace 20s, monitor "
                       "period 1s, tolerations 1s, eviction 10 nodes/s (ControlPlaneConfig.fastest_safe).")
    @state_dir_option
    def up(nodes: int, node_cpu: float, node_memory: str, node_monitor_grace_period: str | None,
           fastest_safe_node_failure: bool, state_dir: Path | None) -> None:
        """Build (once) and start the cluster in the background; returns once the nodes are Ready."""
        _forward(["up", "--nodes", str(nodes), "--node-cpu", str(node_cpu), "--node-memory", node_memory,
                  *(["--node-monitor-grace-period", node_monitor_grace_period]
                    if node_monitor_grace_period else []),
                  *(["--fastest-safe-node-failure"] if fastest_safe_node_failure else [])], state_dir)

    @dev_cluster.command("down")
    @state_dir_option
    def down(state_dir: Path | None) -> None:
        """Stop the kubelets (their pods die) and the control plane."""
        _forward(["down"], state_dir)

    @dev_cluster.command("kubeconfig")
    @state_dir_option
    def kubeconfig(state_dir: Path | None) -> None:
        """Print the path of the admin kubeconfig."""
        _forward(["kubeconfig"], state_dir)

    @dev_cluster.command("status")
    @state_dir_option
    def status(state_dir: Path | None) -> None:
        """Liveness and memory of each component, and the state of each node."""
        _forward(["status"], state_dir)

    @dev_cluster.command("build")
    def build() -> None:
        """Only build (or locate) the control-plane binaries."""
        _forward(["build"], None)

    tls_file = click.Path(exists=True, dir_okay=False, path_type=Path)

    @cli.command("kubelet")
    @click.option("--name", required=True, help="Node name.")
    @click.option("--kubeconfig", default="", help="The node's kubeconfig (empty: in-cluster).")
    @click.option("--cpu", default=2.0, show_default=True)
    @click.option("--memory", default="4Gi", show_default=True)
    @click.option("--gpu", default=0, show_default=True)
    @click.option("--zone", default="", help="topology.kubernetes.io/zone (empty: the node name).")
    @click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".jobq/nodes"),
                  show_default=True)
    @click.option("--node-lease-duration-seconds", type=int, default=40, show_default=True,
                  help="leaseDurationSeconds of the node's Lease (the upstream kubelet's default).")
    @click.option("--lease-renew-interval", type=float, default=None,
                  show_default="lease duration x 0.25 = 10, as upstream",
                  help="Seconds between Lease renewals; a failed renewal is retried from 0.2 s, doubling.")
    @click.option("--node-status-update-frequency", type=float, default=10.0, show_default=True,
                  help="Seconds between node status computations; the status is posted only if it "
                       "changed (the upstream kubelet's default).")
    @click.option("--node-status-report-frequency", type=float, default=300.0, show_default=True,
                  help="Seconds after which an unchanged node status is posted anyway (the upstream "
                       "kubelet's default, 5 min).")
    @click.option("--tls-cert-file", type=tls_file, default=None,
                  help="Serving certificate of the kubelet's HTTPS log API (SANs 127.0.0.1 and the node "
                       "name); needs --tls-private-key-file and --client-ca-file. Without all three there "
                       "is no log server, so `kubectl logs` will not work for this node's pods.")
    @click.option("--tls-private-key-file", type=tls_file, default=None,
                  help="Private key of --tls-cert-file.")
    @click.option("--client-ca-file", type=tls_file, default=None,
                  help="CA of the API server's kubelet-client certificate: only that identity (or "
                       "group system:masters) may read logs.")
    def kubelet(name: str, kubeconfig: str, cpu: float, memory: str, gpu: int, zone: str, work_dir: Path,
                node_lease_duration_seconds: int, lease_renew_interval: float | None,
                node_status_update_frequency: float, node_status_report_frequency: float,
                tls_cert_file: Path | None, tls_private_key_file: Path | None,
                client_ca_file: Path | None) -> None:
        """Be one node of a Kubernetes cluster: register, heartbeat, run bound pods as processes.

        The Lease and node status defaults are the upstream kubelet's: Lease duration 40s, renewed
        every 10s; node status computed every 10s, posted when it changed or else every 5m.
        Without all three TLS files (--tls-cert-file, --tls-private-key-file, --client-ca-file)
        there is no log server, so `kubectl logs` will not work for this node's pods; the
        kubelets of `jobq dev-cluster up` get them.
        """
        from workers import kubelet as agent

        optional = {"--lease-renew-interval": lease_renew_interval, "--tls-cert-file": tls_cert_file,
                    "--tls-private-key-file": tls_private_key_file, "--client-ca-file": client_ca_file}
        given = [arg for flag, value in optional.items() if value is not None for arg in (flag, str(value))]
        agent.main(["--name", name, "--kubeconfig", kubeconfig, "--cpu", str(cpu), "--memory", memory,
                    "--gpu", str(gpu), "--zone", zone, "--work-dir", str(work_dir),
                    "--node-lease-duration-seconds", str(node_lease_duration_seconds),
                    "--node-status-update-frequency", str(node_status_update_frequency),
                    "--node-status-report-frequency", str(node_status_report_frequency), *given])
