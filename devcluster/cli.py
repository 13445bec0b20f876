"""``jobq dev-cluster ...``: a local Kubernetes control plane with simulated kubelets.

Each command runs ``devcluster.lifecycle.main`` (also ``python -m devcluster``). Registered on the
``jobq`` group by ``submitter.cli``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

STATE_DIR_HELP = "Cluster state, logs and kubeconfig (default: $JOBQ_DEV_CLUSTER_DIR or ./.jobq/dev-cluster)."


def _forward(args: list[str], state_dir: Path | None) -> None:
    from devcluster import lifecycle

    code = lifecycle.main([*(["--state-dir", str(state_dir)] if state_dir else []), *args])
    if code:
        sys.exit(code)


def register(group: click.Group) -> None:
    """Add the ``dev-cluster`` group to ``group``."""
    state_dir_option = click.option("--state-dir", type=click.Path(path_type=Path), default=None,
                                    help=STATE_DIR_HELP)

    @group.group("dev-cluster")
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
