"""``jobq``: the one command line for submitting, running and operating jobq.

Each package registers its own subcommands on this group (``register``): the broker ``up``,
``demo`` and ``dispatcher``; the workers ``node-agent`` and ``kubelet``; ``chaos``;
``dev-cluster``; and this package the client commands (``submit``, ``status``, ``logs``, ``list``,
``result``, ``cancel``, ``schema``, ``dlq``, ``artifacts``, ``watch``). Subcommands import what they need when
they run, so ``jobq submit`` stays quick to start, and the light client (``pip install jobq``, no
extras) lists every subcommand: one whose extra is missing says which to install (``extras``).

Errors: every command fails the same way, in one place (``clibase.JobqGroup``): one line on
stderr, ``Error: <what went wrong>``, and an exit code (``clibase.EXIT_*``); never a traceback
(set JOBQ_DEBUG=1 to get one for an unexpected error).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import click

from broker import cli as broker_cli
from chaos import cli as chaos_cli
from submitter import artifact_commands, clibase, commands, demo_commands, dlq_commands, extras
from submitter.clibase import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from workers import cli as workers_cli

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_REFUSED", "EXIT_TIMEOUT", "EXIT_UNREACHABLE",
           "EXIT_USAGE", "cli", "main"]


@click.group(cls=clibase.JobqGroup, epilog=clibase.exit_codes_help(),
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@clibase.version_option
@click.option("--log-format", type=click.Choice(["console", "json"]), default=None,
              help="Log format on stderr (default: $JOBQ_LOG_FORMAT or console on a terminal, else json).")
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
@click.pass_context
def cli(ctx: click.Context, log_format: str | None, log_level: str) -> None:
    """jobq: a job queue for ML workloads. Jobs go in through NATS JetStream, run as pods on a
    cluster (an embedded local one, or Kubernetes), are retried with backoff and moved off dead
    nodes within seconds.

    \b
    Quick start:
      jobq demo                 run the embedded stack and 24 real ML jobs, print a summary
      jobq up                   run the embedded stack in the foreground (Ctrl-C stops it)
      jobq submit --task sklearn.train --args '{"dataset": "wine"}' --wait

    Commands that print data take -o table|json|yaml.
    """
    from broker import contract, logsetup

    fmt = (log_format or os.environ.get(contract.ENV_LOG_FORMAT)
           or ("console" if sys.stderr.isatty() else "json"))
    os.environ[contract.ENV_LOG_FORMAT] = fmt
    logsetup.configure(fmt="console" if fmt == "console" else "json", level=log_level,
                       component=ctx.invoked_subcommand)


def _register_watch(group: click.Group) -> None:
    """``jobq watch`` imports aiohttp and rich (the ``watch`` extra) as it loads: listed without them."""
    if extras.missing("watch"):
        group.add_command(extras.placeholder(
            "watch", "Live view of queues, retries, nodes, node failures and dead letters (Ctrl-C ends)."))
        return
    from submitter import watch_commands

    watch_commands.register(group)


for register in (broker_cli.register, workers_cli.register, commands.register, demo_commands.register,
                 dlq_commands.register, artifact_commands.register,
                 _register_watch, chaos_cli.register):
    register(cli)
if importlib.util.find_spec("devcluster") is not None:  # the production image leaves it out (Dockerfile)
    from devcluster import cli as devcluster_cli

    devcluster_cli.register(cli)
extras.guard(cli)  # the light client (no extras): a server-side command says which extra to install, exit 2


def main() -> None:
    cli(prog_name="jobq")


if __name__ == "__main__":
    main()
