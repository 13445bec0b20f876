"""The broker's subcommands: ``jobq up`` (the embedded stack), ``jobq dispatcher`` and
``jobq nats-auth`` (NATS users per role for a NATS jobq does not start).

Registered on the ``jobq`` group by ``submitter.cli``; each imports what it runs when it runs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from submitter import clibase


def register(group: click.Group) -> None:
    """Add ``up``, ``dispatcher`` and ``nats-auth`` to ``group``."""
    for command in (up, dispatcher, nats_auth):
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
@click.option("--nats-auth", type=click.Choice(["on", "off"]), default=None,
              help="A NATS user per role for the NATS we start (secrets in DATA_DIR/nats-auth; "
                   "docs/security.md). Default: $JOBQ_NATS_AUTH, else on.")
def up(nodes: int, node_cpu: float, node_memory: str, data_dir: Path, nats_url: str | None,
       nats_port: int, http_port: int, dispatchers: int, nats_servers: str, nats_sync: str | None,
       backend: str, kubeconfig: Path | None, nats_auth: str | None) -> None:
    """Run the embedded stack in the foreground until Ctrl-C.

    Starts a real nats-server with JetStream (unless --nats is given), the dispatcher and NODES
    node agents. Ctrl-C stops it gracefully: queued and running jobs are kept and finish after
    the next `jobq up`.
    """
    import dataclasses

    from broker import settings
    from broker.embedded import runner

    try:
        config = runner.stack_config(data_dir=data_dir, nodes=nodes, node_cpu=node_cpu,
                                     node_memory=node_memory, nats_url=nats_url, nats_port=nats_port,
                                     http_port=http_port, dispatchers=dispatchers,
                                     nats_servers=int(nats_servers))
    except settings.SettingsError as exc:  # JOBQ_NATS_AUTH, JOBQ_NATS_TLS
        raise click.UsageError(str(exc)) from None
    if nats_auth is not None:
        config = dataclasses.replace(config, nats_auth=nats_auth == "on")
    if nats_sync is not None:
        config = dataclasses.replace(config, nats_sync_always=nats_sync == "always")
    if backend == "kubernetes":
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


@click.group(name="nats-auth")
def nats_auth() -> None:
    """NATS users per role for a NATS that jobq does not start (your own, or the chart's bundled
    one). `jobq up` and `jobq demo` do this by themselves. See docs/security.md."""


@nats_auth.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def nats_auth_init(directory: Path) -> None:
    """Create the secrets in DIRECTORY (existing ones are kept) and write
    DIRECTORY/authorization.conf, the block to `include` in nats-server's config.

    DIRECTORY then holds: issuer.nk and token.key (the dispatchers' auth callout: give them
    JOBQ_NATS_AUTH_DIR), dispatcher/submitter/operator.password (users jobq-<role>). On
    Kubernetes: `kubectl create secret generic jobq-nats-auth --from-file=DIRECTORY` and set the
    chart's nats.auth.rolesSecret."""
    from broker.natsauth import keys, server_config

    try:
        keys.ensure(directory)
        path = server_config.write_authorization_file(directory)
    except (OSError, keys.KeysError) as exc:
        raise click.ClickException(f"cannot write the NATS auth secrets in {directory}: {exc}") from None
    click.echo(f"wrote {path} (include it in nats-server's config; it holds passwords, mode 0600)")
    click.echo(f"dispatchers: JOBQ_NATS_USER=jobq-dispatcher "
               f"JOBQ_NATS_PASSWORD_FILE={directory}/dispatcher.password JOBQ_NATS_AUTH_DIR={directory}")
    click.echo(f"submitting services: JOBQ_NATS_USER=jobq-submitter "
               f"JOBQ_NATS_PASSWORD_FILE={directory}/submitter.password")


@nats_auth.command(name="node-token")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("node")
def nats_auth_node_token(directory: Path, node: str) -> None:
    """Print the NATS token of node agent NODE (its JOBQ_NATS_TOKEN): it may use that node's
    subjects only. DIRECTORY is the one `jobq nats-auth init` made."""
    from broker.natsauth import keys, tokens

    try:
        key = keys.callout_keys(directory).token_key
        token = tokens.node_token(key, node)
        tokens.verify(key, token)  # refuses a name that is no subject token
    except (keys.KeysError, tokens.TokenError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
