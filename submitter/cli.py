"""``jobq``: the one command line for submitting, running and operating jobq.

Subcommands import what they need when they run, so ``jobq submit`` stays quick to start.

Errors: every command fails the same way, in one place (``JobqGroup``): one line on stderr,
``Error: <what went wrong>``, and an exit code from the table below; never a traceback (set
JOBQ_DEBUG=1 to get one for an unexpected error).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from broker import contract

T = TypeVar("T")

DEFAULT_NATS = "nats://127.0.0.1:4222"

EXIT_OK = 0
EXIT_FAILED = 1
"""The job ended dead or cancelled (``--wait``, ``result``), or the command failed otherwise."""
EXIT_USAGE = 2
"""Bad command line: unknown option, bad JSON in --args, an invalid or too big job."""
EXIT_NOT_FOUND = 3
"""No job has that id."""
EXIT_UNREACHABLE = 4
"""NATS (or the dispatcher, or its HTTP API) cannot be reached or did not answer in time."""
EXIT_TIMEOUT = 5
"""``--wait --timeout`` ran out before the job finished; the job goes on."""


class CliError(click.ClickException):
    """A failed command: one line on stderr and an exit code (EXIT_*)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(" ".join(message.split()) or "failed")
        self.code = exit_code

    @property  # click declares exit_code class-wide; ours is per error
    def exit_code(self) -> int:  # type: ignore[override]
        return self.code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.message}", file=file, err=file is None)


def cli_error(exc: Exception) -> CliError:
    """The one-line error and exit code for anything a command raised."""
    import nats.errors
    import nats.js.errors
    import pydantic

    from submitter import client

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "jobq"
        return CliError(f"{exc.format_message()} (see '{where} --help')", EXIT_USAGE)
    if isinstance(exc, click.ClickException):
        return CliError(exc.format_message(), exc.exit_code)
    if isinstance(exc, client.JobNotFound):
        return CliError(str(exc), EXIT_NOT_FOUND)
    if isinstance(exc, client.WaitTimeout):
        return CliError(str(exc), EXIT_TIMEOUT)
    if isinstance(exc, client.DispatcherUnavailable):
        return CliError(str(exc), EXIT_UNREACHABLE)
    if isinstance(exc, client.InvalidJob | contract.SubmissionError):
        return CliError(str(exc), EXIT_USAGE)
    if isinstance(exc, client.JobqError):
        return CliError(str(exc), EXIT_FAILED)
    unreachable = (nats.errors.NoServersError, nats.errors.ConnectionClosedError, nats.errors.TimeoutError,
                   nats.errors.NoRespondersError, nats.errors.StaleConnectionError,
                   nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)
    if isinstance(exc, unreachable):
        return CliError(f"NATS did not answer ({exc}). Is the jobq stack running (jobq up)?",
                        EXIT_UNREACHABLE)
    if isinstance(exc, nats.js.errors.NotFoundError):
        return CliError(f"jobq's streams or buckets are missing on this NATS ({type(exc).__name__}): "
                        "has a dispatcher ever run against it?", EXIT_FAILED)
    if isinstance(exc, nats.errors.Error):
        return CliError(f"NATS failed: {exc}", EXIT_FAILED)
    if isinstance(exc, ConnectionError):  # natsutil.connect: NATS unreachable
        return CliError(str(exc), EXIT_UNREACHABLE)
    if "aiohttp" in sys.modules:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return CliError(f"HTTP request failed: {str(exc) or type(exc).__name__}", EXIT_UNREACHABLE)
    if isinstance(exc, TimeoutError):
        return CliError(f"timed out: {exc}" if str(exc) else "timed out", EXIT_TIMEOUT)
    if isinstance(exc, pydantic.ValidationError):
        return CliError(f"unexpected data: {exc.error_count()} problem(s): {exc.errors()[0]['msg']}")
    return CliError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn any exception into a CliError (click's Exit and Abort, and SystemExit, go through)."""
    try:
        yield
    except (click.exceptions.Exit, click.Abort, click.exceptions.NoArgsIsHelpError):
        raise
    except BrokenPipeError:  # `jobq list | head`: click quiets it
        raise
    except Exception as exc:
        if os.environ.get("JOBQ_DEBUG") and not isinstance(exc, click.ClickException):
            raise
        raise cli_error(exc) from None


class JobqGroup(click.Group):
    """The ``jobq`` group: every error of every subcommand (and of parsing its command line) is
    one line on stderr with an EXIT_* code (``cli_error``). Nested groups are covered too, since
    they run inside this one."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; what it raises becomes one line and an exit code (JobqGroup)."""
    return asyncio.run(coro)


def resolve_nats(explicit: str | None, data_dir: Path = Path(".jobq")) -> str:
    """--nats, else JOBQ_NATS_URL, else the running `jobq up` in ./.jobq, else the default."""
    if explicit:
        return explicit
    if os.environ.get("JOBQ_NATS_URL"):
        return os.environ["JOBQ_NATS_URL"]
    from broker.embedded.stack import read_state

    state = read_state(data_dir)
    if state and isinstance(state.get("nats_url"), str):
        return str(state["nats_url"])
    return DEFAULT_NATS


nats_option = click.option("--nats", "nats_url", default=None, metavar="URL",
                           help="NATS server URL(s). Default: $JOBQ_NATS_URL, else the stack started "
                                f"by `jobq up` in ./.jobq, else {DEFAULT_NATS}.")


@click.group(cls=JobqGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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

    \b
    Exit codes (an error is one line on stderr):
      0 success   1 the job ended dead/cancelled, or the command failed   2 bad command line
      3 no such job   4 NATS or the dispatcher unreachable   5 --wait --timeout ran out (job goes on)
    """
    from broker import logsetup

    fmt = log_format or os.environ.get("JOBQ_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    os.environ["JOBQ_LOG_FORMAT"] = fmt
    logsetup.configure(fmt="console" if fmt == "console" else "json", level=log_level,
                       component=ctx.invoked_subcommand)


# --- running the system ---------------------------------------------------------------------


@cli.command()
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

        from broker.devcluster import nodes as kubelets

        try:
            env = kubelets.stack_env(kubeconfig)
        except kubelets.NodeError as exc:
            raise click.ClickException(str(exc)) from None
        config = dataclasses.replace(config, nodes=0, env={**config.env, **env})
    _run(runner.run_up(config))


@cli.command()
@click.option("--jobs", default=24, show_default=True, help="Jobs in the workload (at least 4).")
@click.option("--nodes", default=3, show_default=True, help="Node agents.")
@click.option("--node-cpu", default=6.0, show_default=True,
              help="CPU cores each node offers (sized so that the others can absorb a killed node's work).")
@click.option("--node-memory", default="8Gi", show_default=True, help="Memory each node offers.")
@click.option("--kill-node/--no-kill-node", default=False, show_default=True,
              help="SIGKILL one node agent while jobs run, and report the recovery.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON summary line on stdout.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the demo keeps its stack (default: a fresh .jobq/demo-<time>).")
@click.option("--nats", "nats_url", default=None, metavar="URL",
              help="Use this NATS server instead of starting one.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the workload.")
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Where pods run: local node agents, or Kubernetes (--kill-node then kills a kubelet).")
@click.option("--kubeconfig", type=click.Path(path_type=Path), default=None,
              help="Kubeconfig for --backend kubernetes (default: the one of `jobq dev-cluster up`).")
def demo(jobs: int, nodes: int, node_cpu: float, node_memory: str, kill_node: bool, as_json: bool,
         data_dir: Path | None,
         nats_url: str | None, timeout: float, backend: str, kubeconfig: Path | None) -> None:
    """Start the embedded stack, run a workload of real ML jobs, print a summary, stop.

    The workload trains, evaluates and sweeps scikit-learn classifiers on bundled data sets, then
    batch-predicts with the trained models. Exits non-zero if any job was lost or failed.
    """
    from broker.embedded import demo as demo_mod

    if jobs < 4:
        raise click.BadParameter("at least 4 jobs", param_hint="--jobs")
    summary = _run(demo_mod.run_demo(jobs=jobs, nodes=nodes, node_cpu=node_cpu, node_memory=node_memory,
                                     kill_node=kill_node, data_dir=data_dir,
                                     nats_url=nats_url, timeout_s=timeout, as_json=as_json,
                                     backend=backend, kubeconfig=kubeconfig))
    if summary["lost"] or summary["succeeded"] != summary["submitted"] or summary["duplicate_results"]:
        sys.exit(1)


@cli.command()
def dispatcher() -> None:
    """Run one dispatcher (settings from JOBQ_* environment variables; see docs/configuration.md)."""
    from broker import app, settings

    try:
        config = settings.Settings.from_env(os.environ)
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        app.install_signal_handlers(stop)
        await app.run_dispatcher(config, stop)

    _run(main())


@cli.command("node-agent")
@click.option("--name", required=True, help="Node name (unique in the cluster).")
@click.option("--cpu", default=2.0, show_default=True, help="CPU cores offered.")
@click.option("--memory", default="4Gi", show_default=True, help="Memory offered.")
@click.option("--gpu", default=0, show_default=True, help="GPUs offered.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between heartbeats.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".jobq/nodes"), show_default=True,
              help="Pod logs go under here.")
@nats_option
def node_agent(name: str, cpu: float, memory: str, gpu: int, interval: float, work_dir: Path,
               nats_url: str | None) -> None:
    """Be one node of the embedded cluster: run pods as local processes."""
    from broker.app import install_signal_handlers
    from workers import node_agent as agent

    try:
        capacity = contract.Resources(cpu=cpu, memory=memory, gpu=gpu)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    config = agent.AgentSettings(name=name, capacity=capacity, interval_s=interval, work_dir=work_dir,
                                 nats_url=resolve_nats(nats_url))

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await agent.run_agent(config, stop)

    _run(main())


# --- submitting and inspecting ---------------------------------------------------------------

from submitter import commands  # noqa: E402  (the client-side commands live in their own module)

commands.register(cli, nats_option=nats_option, resolve_nats=resolve_nats, run=_run)


def main() -> None:
    cli(prog_name="jobq")


if __name__ == "__main__":
    main()
