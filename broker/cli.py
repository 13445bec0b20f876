"""The broker's subcommands: ``jobq up`` (the embedded stack) and ``jobq dispatcher``.

Registered on the ``jobq`` group by ``submitter.cli``; each imports what it runs when it runs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from submitter import clibase


def register(group: click.Group) -> None:
    """Add ``up`` and ``dispatcher`` to ``group``."""
    for command in (up, dispatcher):
        group.add_command(command)


@click.command()
@click.option("--nodes", default=3, show_default=True, help="Node agents (separate processes).")
@click.option("--node-cpu", default=2.0, show_default=True, help="CPU cores each node offers.")
@click.option("--node-memory", default="4Gi", show_default=True, help="Memory each node offers.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".jobq"), show_default=True,
              help="NATS store, logs and stack.json.")
@click.option("--nats", "nats_url", default=None, metavar="URL",
              help="Use this NATS server instead of starting one.")
@click.option("--nats-port", default=4222, show_default=True, help="Port of the NATS we start (-1: free).")
@click.option("--http-port", default=8222, show_default=True, help="Dashboard/API port (0: free).")
@click.option("--dispatchers", default=1, show_default=True, help="Dispatchers (one leads, others stand by).")
@click.option("--nats-servers", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="NATS servers to start: 3 makes a cluster with replicated (R3) streams.")
@click.option("--nats-sync", type=click.Choice(["always", "default"]), default=None,
              help="fsync of the NATS we start: always (every write, before its ack) or nats-server's "
                   "default (every 2 min; faster, acked writes can die with the machine). "
                   "Default: $JOBQ_NATS_SYNC, else always.")
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Where pods run: local node agents, or a Kubernetes cluster (no local nodes).")
@click.option("--kubeconfig", type=click.Path(path_type=Path), default=None,
              help="Kubeconfig for --backend kubernetes (default: the one of `jobq dev-cluster up`).")
def up(nodes: int, node_cpu: float, node_memory: str, data_dir: Path, nats_url: str | None,
       nats_port: int, http_port: int, dispatchers: int, nats_servers: str, nats_sync: str | None,
       backend: str, kubeconfig: Path | None) -> None:
    """Run the embedded stack in the foreground until Ctrl-C.

    Starts a real nats-server with JetStream (unless --nats is given), the dispatcher and NODES
    node agents. Ctrl-C stops it gracefully: queued and running jobs are kept and finish after
    the next `jobq up`.
    """
    from broker.embedded import runner

    config = runner.stack_config(data_dir=data_dir, nodes=nodes, node_cpu=node_cpu,
                                 node_memory=node_memory, nats_url=nats_url, nats_port=nats_port,
                                 http_port=http_port, dispatchers=dispatchers,
                                 nats_servers=int(nats_servers))
    if nats_sync is not None:
        import dataclasses

        config = dataclasses.replace(config, nats_sync_always=nats_sync == "always")
    if backend == "kubernetes":
        import dataclasses

        from devcluster import nodes as kubelets

        try:
            env = kubelets.stack_env(kubeconfig)
        except kubelets.NodeError as exc:
            raise click.ClickException(str(exc)) from None
        config = dataclasses.replace(config, nodes=0, env={**config.env, **env})
    clibase.run(runner.run_up(config))


@click.command()
def dispatcher() -> None:
    """Run one dispatcher (settings from JOBQ_* environment variables; see docs/configuration.md)."""
    from broker import app, settings, signals

    try:
        config = settings.Settings.from_env(os.environ)
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        signals.install_signal_handlers(stop)
        await app.run_dispatcher(config, stop)

    clibase.run(main())
