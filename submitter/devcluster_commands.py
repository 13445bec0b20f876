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
    @click.option("--node-monitor-grace-period", default="5s", show_default=True,
                  help="kube-controller-manager: how long a silent node stays Ready (stock: 50s).")
    @state_dir_option
    def up(nodes: int, node_cpu: float, node_memory: str, node_monitor_grace_period: str,
           state_dir: Path | None) -> None:
        """Build (once) and start the cluster in the background; returns once the nodes are Ready."""
        _forward(["up", "--nodes", str(nodes), "--node-cpu", str(node_cpu), "--node-memory", node_memory,
                  "--node-monitor-grace-period", node_monitor_grace_period], state_dir)

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

    @cli.command("kubelet")
    @click.option("--name", required=True, help="Node name.")
    @click.option("--kubeconfig", default="", help="The node's kubeconfig (empty: in-cluster).")
    @click.option("--cpu", default=2.0, show_default=True)
    @click.option("--memory", default="4Gi", show_default=True)
    @click.option("--gpu", default=0, show_default=True)
    @click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".jobq/nodes"),
                  show_default=True)
    def kubelet(name: str, kubeconfig: str, cpu: float, memory: str, gpu: int, work_dir: Path) -> None:
        """Be one node of a Kubernetes cluster: register, heartbeat, run bound pods as processes."""
        from workers import kubelet as agent

        agent.main(["--name", name, "--kubeconfig", kubeconfig, "--cpu", str(cpu), "--memory", memory,
                    "--gpu", str(gpu), "--work-dir", str(work_dir)])
