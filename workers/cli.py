"""The node side's subcommands: ``jobq node-agent`` (a node of the embedded cluster) and
``jobq kubelet`` (a simulated kubelet of a Kubernetes cluster).

Registered on the ``jobq`` group by ``submitter.cli``; each imports what it runs when it runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from broker import contract
from submitter import clibase


def register(group: click.Group) -> None:
    """Add ``node-agent`` and ``kubelet`` to ``group``."""
    for command in (node_agent, kubelet):
        group.add_command(command)


@click.command("node-agent")
@click.option("--name", required=True, help="Node name (unique in the cluster).")
@click.option("--cpu", default=2.0, show_default=True, help="CPU cores offered.")
@click.option("--memory", default="4Gi", show_default=True, help="Memory offered.")
@click.option("--gpu", default=0, show_default=True, help="GPUs offered.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between heartbeats.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".jobq/nodes"), show_default=True,
              help="Pod logs go under here.")
@clibase.nats_option
def node_agent(name: str, cpu: float, memory: str, gpu: int, interval: float, work_dir: Path,
               nats_url: str | None) -> None:
    """Be one node of the embedded cluster: run pods as local processes."""
    from broker.signals import install_signal_handlers
    from workers import node_agent as agent

    try:
        capacity = contract.Resources(cpu=cpu, memory=memory, gpu=gpu)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    config = agent.AgentSettings(name=name, capacity=capacity, interval_s=interval, work_dir=work_dir,
                                 nats_url=clibase.resolve_nats(nats_url))

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await agent.run_agent(config, stop)

    clibase.run(main())


_tls_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("kubelet")
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
@click.option("--tls-cert-file", type=_tls_file, default=None,
              help="Serving certificate of the kubelet's HTTPS log API (SANs 127.0.0.1 and the node "
                   "name); needs --tls-private-key-file and --client-ca-file. Without all three there "
                   "is no log server, so `kubectl logs` will not work for this node's pods.")
@click.option("--tls-private-key-file", type=_tls_file, default=None,
              help="Private key of --tls-cert-file.")
@click.option("--client-ca-file", type=_tls_file, default=None,
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
