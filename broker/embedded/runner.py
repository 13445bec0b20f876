"""`jobq up`: run the embedded stack in the foreground until Ctrl-C."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import structlog

from broker import contract
from broker.embedded.stack import Stack, StackConfig, StackError
from broker.signals import install_signal_handlers


def stack_config(*, data_dir: Path, nodes: int, node_cpu: float, node_memory: str, nats_url: str | None,
                 nats_port: int, http_port: int, dispatchers: int, nats_servers: int = 1) -> StackConfig:
    import os

    return StackConfig(data_dir=data_dir, nodes=nodes, node_cpu=node_cpu, node_memory=node_memory,
                       nats_url=nats_url, nats_port=nats_port, http_port=http_port,
                       dispatchers=dispatchers, nats_servers=nats_servers,
                       log_format=os.environ.get(contract.ENV_LOG_FORMAT, "json"))


def say(message: str) -> None:
    """What `jobq up` is doing: a line for people on a console, else a log event (with
    --log-format json every stderr line is a JSON object)."""
    import os

    if os.environ.get(contract.ENV_LOG_FORMAT, "json") == "console":
        click.echo(f"jobq: {message}", err=True)
    else:
        structlog.get_logger("jobq.up").info("stack_progress", message=message)


async def run_up(config: StackConfig) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    stack = Stack(config, progress=say)
    try:
        await stack.start()
    except StackError as exc:
        await stack.stop()
        raise click.ClickException(str(exc)) from None
    click.echo(f"jobq is up\n"
               f"  dashboard  {stack.dashboard_url}\n"
               f"  nats       {stack.nats_url}"
               f"{f' (TLS, CA {stack.nats_ca})' if stack.nats_ca else ''}\n"
               f"  nodes      {', '.join(stack.nodes)}\n"
               f"  logs       {stack.logs}/\n"
               f"Submit with: jobq submit --task sklearn.train --args '{{\"dataset\": \"wine\"}}' --wait\n"
               f"Ctrl-C stops (jobs in flight are kept and finish after the next `jobq up`).")
    sys.stdout.flush()
    watcher = asyncio.create_task(_watch_children(stack, stop))
    await stop.wait()
    watcher.cancel()
    say("stopping: dispatcher, then nodes, then NATS")
    await stack.stop()
    say("stopped")


async def _watch_children(stack: Stack, stop: asyncio.Event) -> None:
    """Stop the stack if a dispatcher dies unexpectedly (nodes may die: that is chaos)."""
    while not stop.is_set():
        await asyncio.sleep(1)
        for index, process in stack.dispatchers.items():
            if process.returncode is not None and process.returncode not in (0, -9, 137):
                say(f"dispatcher {index} exited with {process.returncode}; see {stack.logs}")
