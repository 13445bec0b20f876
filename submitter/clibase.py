"""What every ``jobq`` subcommand shares, whichever package registers it: the exit codes, the
one-line errors (``JobqGroup``), running a coroutine, and finding NATS (``--nats``).

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
from submitter import extras
from submitter.client import JobqClient

T = TypeVar("T")


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
EXIT_REFUSED = 6
"""The dispatcher refused the job (JOBQ_QUEUE_POLICY, or invalid): a dead letter, no record."""

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_FAILED, "the job ended dead or cancelled (submit --wait, result), or the command failed"),
    (EXIT_USAGE, "bad command line, or an invalid job (nothing was sent)"),
    (EXIT_NOT_FOUND, "no such job (or dead letter)"),
    (EXIT_UNREACHABLE, "NATS, the dispatcher or its HTTP API unreachable, or refused the credentials"),
    (EXIT_TIMEOUT, "--wait --timeout ran out first; the job goes on"),
    (EXIT_REFUSED, "the dispatcher refused the job (JOBQ_QUEUE_POLICY, invalid): a dead letter"),
)
"""Every exit code of every ``jobq`` command: shown by ``jobq --help``, tabled in README.md. 1 to 4
mean what a pod's own exit codes (``contract.EXIT_*``) mean: failed, bad input, not found, no NATS."""


def exit_codes_help() -> str:
    """The exit-code table of ``jobq --help`` (click keeps the lines of a ``\\b`` paragraph)."""
    return "\b\nExit codes (an error is one line on stderr, `Error: ...`):\n" + "\n".join(
        f"  {code}  {meaning}" for code, meaning in EXIT_CODES)


def version_text() -> str:
    """``jobq X.Y.Z (contract N)``: the installed package's version and the wire contract's."""
    from importlib import metadata

    try:
        version = metadata.version("jobq")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    return f"jobq {version} (contract {contract.CONTRACT_VERSION})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


version_option = click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Print the jobq version and its wire contract version, and exit.")


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
    if isinstance(exc, ModuleNotFoundError):  # an import of an extra that is not installed
        exc = extras.for_missing_module(exc) or exc
    if isinstance(exc, extras.ExtraMissing):
        return CliError(str(exc), EXIT_USAGE)
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "jobq"
        return CliError(f"{exc.format_message()} (see '{where} --help')", EXIT_USAGE)
    if isinstance(exc, click.ClickException):
        return CliError(exc.format_message(), exc.exit_code)
    if isinstance(exc, client.JobRefused):
        return CliError(exc.describe(), EXIT_REFUSED)
    if isinstance(exc, client.JobNotFound):
        return CliError(str(exc), EXIT_NOT_FOUND)
    if isinstance(exc, client.WaitTimeout):
        return CliError(str(exc), EXIT_TIMEOUT)
    if isinstance(exc, client.DispatcherUnavailable):
        return CliError(str(exc), EXIT_UNREACHABLE)
    if isinstance(exc, client.InvalidJob | contract.SubmissionError):
        return CliError(str(exc), EXIT_USAGE)
    if isinstance(exc, contract.NatsTlsError):  # JOBQ_NATS_CA names no readable CA
        return CliError(str(exc), EXIT_FAILED)
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


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; what it raises becomes one line and an exit code (JobqGroup)."""
    return asyncio.run(coro)


def resolve_nats(explicit: str | None, data_dir: Path = Path(".jobq")) -> str:
    """--nats, else JOBQ_NATS_URL, else the running `jobq up` in ./.jobq, else the default.

    When the URL is that stack's own NATS and JOBQ_NATS_CA is not set, the stack's CA (stack.json
    ``nats_ca``) becomes this process's JOBQ_NATS_CA, so the command verifies NATS's TLS with it."""
    url = _resolve_nats_url(explicit, data_dir)
    if not os.environ.get(contract.ENV_NATS_CA):
        from broker.embedded.stack_state import nats_ca_for

        ca = nats_ca_for(url, data_dir)
        if ca:
            os.environ[contract.ENV_NATS_CA] = ca
    return url


def _resolve_nats_url(explicit: str | None, data_dir: Path) -> str:
    if explicit:
        return explicit
    if os.environ.get(contract.ENV_NATS_URL):
        return os.environ[contract.ENV_NATS_URL]
    from broker.embedded.stack_state import read_state

    state = read_state(data_dir)
    if state and isinstance(state.get("nats_url"), str):
        return str(state["nats_url"])
    return contract.DEFAULT_NATS_URL


def resolve_nats_auth(
    url: str, data_dir: Path = Path(".jobq"), *, role: str = "submitter"
) -> dict[str, str] | None:
    """Credentials for ``url``: None (the JOBQ_NATS_* environment, or none) unless the
    environment names none and ``url`` is the running `jobq up` stack's own NATS; then that
    stack's ``role`` user. Credentials are never sent to another server."""
    from broker.embedded.stack_state import nats_auth_for

    return nats_auth_for(url, data_dir, role)


def client(explicit_url: str | None, data_dir: Path = Path(".jobq"), *, name: str = "jobq-client"
           ) -> JobqClient:
    """The SDK client the CLI uses: ``resolve_nats`` and ``resolve_nats_auth``."""
    url = resolve_nats(explicit_url, data_dir)
    return JobqClient(url, name=name, auth=resolve_nats_auth(url, data_dir))


nats_option = click.option("--nats", "nats_url", default=None, metavar="URL",
                           help="NATS server URL(s). Default: $JOBQ_NATS_URL, else the stack started "
                                f"by `jobq up` in ./.jobq, else {contract.DEFAULT_NATS_URL}.")
