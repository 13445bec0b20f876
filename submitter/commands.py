"""Client-side subcommands: submit, status, list, result, cancel, schema, dlq."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from pydantic import ValidationError

from broker import contract
from submitter import clibase
from submitter.client import JobNotFound, JobqClient, LogUnavailable

STATUS_TAIL_LINES = 10
"""`jobq status` shows this many of a failed attempt's kept lines (`--json` and `jobq logs` all)."""


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _record_line(record: contract.JobRecord) -> str:
    current = record.current
    where = f"{current.node or '-'}#{current.number}" if current else "-"
    task = record.spec.task or " ".join(record.spec.command or ())
    reason = f" ({record.reason})" if record.reason else ""
    return f"{record.spec.id:<26} {record.phase.value:<10} {record.spec.queue:<10} {where:<12} {task}{reason}"


async def _unknown(client: JobqClient, job_id: str, message: str) -> Exception:
    """What to raise for an id without a record: its refusal (exit 6) if a dead letter names it."""
    return await client.refusal(job_id) or JobNotFound(message)


def attempt_lines(record: contract.JobRecord) -> list[str]:
    """`jobq status` lines of each attempt: outcome, a failed one's last output, why one waits."""
    lines = []
    for a in record.attempts:
        lines.append(
            f"  attempt {a.number}: {a.state:<9} node={a.node or '-':<8} "
            f"reason={a.reason or '-'} exit={a.exit_code if a.exit_code is not None else '-'}"
            f" {a.message}".rstrip()
        )
        if a.state == contract.AttemptState.FAILED and a.log_tail:
            kept = a.log_tail.splitlines()
            more = len(kept) - STATUS_TAIL_LINES
            lines.append("    last output" + (
                f" ({more} earlier line(s): jobq logs {record.spec.id} --attempt {a.number}):" if more > 0
                else ":"))
            lines.extend(f"      | {line}" for line in kept[-STATUS_TAIL_LINES:])
        if a is record.current and not a.state.is_final and a.waiting_reason:
            lines.append(f"    waiting: {a.waiting_reason}")
    return lines


def register(cli: click.Group) -> None:

    @cli.command()
    @click.option("--task", help="Built-in task (see `jobq schema`) or module:function.")
    @click.option("--command", "command", multiple=True, help="Run a command instead (repeat per argument).")
    @click.option("--args", "args_json", default="{}", show_default=True,
                  help="Task arguments as JSON, or @FILE to read the JSON from a file (@- stdin).")
    @click.option("--queue", default="default", show_default=True)
    @click.option(
        "--profile",
        type=click.Choice(sorted(contract.PROFILES)),
        default=None,
        help="Named resources: small (scikit-learn), medium, large, gpu.",
    )
    @click.option("--cpu", type=float, default=None, help="CPU cores (instead of --profile).")
    @click.option("--memory", default=None, help="Memory such as 512Mi (instead of --profile).")
    @click.option("--gpu", type=int, default=None, help="GPUs (instead of --profile).")
    @click.option("--attempt-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                  help="Seconds each attempt may run (the job's timeout_s).")
    @click.option("--max-attempts", type=int, default=None, help="Application failures allowed.")
    @click.option("--priority", type=int, default=0, show_default=True)
    @click.option("--id", "job_id", default=None, help="Job id (default: generated).")
    @click.option("--idempotency-key", default=None, help="Submissions with the same key run once.")
    @click.option("--wait", is_flag=True, help="Wait for the job and print its result.")
    @wait_timeout_option
    @clibase.nats_option
    def submit(
        task: str | None,
        command: tuple[str, ...],
        args_json: str,
        queue: str,
        profile: str | None,
        cpu: float | None,
        memory: str | None,
        gpu: int | None,
        attempt_timeout: float | None,
        max_attempts: int | None,
        priority: int,
        job_id: str | None,
        idempotency_key: str | None,
        wait: bool,
        timeout: float | None,
        nats_url: str | None,
    ) -> None:
        """Submit one job; prints its id (or, with --wait, its result).

        With --wait it exits 1 if the job ends dead or cancelled, 6 as soon as the dispatcher
        refuses it (JOBQ_QUEUE_POLICY, or invalid: no record, a dead letter saying why), and 5 if
        --timeout runs out first (the job goes on; follow it with `jobq status ID`)."""
        _check_wait(wait, timeout, hint=" (each attempt's deadline is --attempt-timeout)")
        args = _json_arg(args_json, option="--args")
        fields: dict[str, Any] = {"queue": queue, "args": args, "priority": priority}
        if task:
            fields["task"] = task
        if command:
            fields["command"] = list(command)
        if profile:
            fields["profile"] = profile
        if cpu is not None or memory is not None or gpu is not None:
            defaults = contract.Resources()
            fields["resources"] = {
                "cpu": cpu or defaults.cpu,
                "memory": memory or defaults.memory,
                "gpu": gpu or 0,
            }
        if attempt_timeout is not None:
            fields["timeout_s"] = attempt_timeout
        if max_attempts is not None:
            fields["retry"] = {"max_attempts": max_attempts}
        if job_id:
            fields["id"] = job_id
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key

        url = clibase.resolve_nats(nats_url)
        try:  # before connecting: an invalid job is a usage error wherever NATS is
            spec = JobqClient(url).build_spec(**fields)
        except ValidationError as exc:
            raise click.UsageError(_problems(exc)) from None

        async def go() -> None:
            async with JobqClient(url, auth=clibase.resolve_nats_auth(url)) as client:
                handle = await client.submit(spec)
                if not wait:
                    click.echo(handle.id)
                    return
                if sys.stderr.isatty():  # chatter for people; scripts get one line, and only on error
                    click.echo(f"submitted {handle.id}; waiting", err=True)
                result = await handle.result(timeout=timeout)  # JobFailed, JobRefused, WaitTimeout: clibase
                _echo_json(result.model_dump(mode="json"))

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
    @clibase.nats_option
    def status(job_id: str, as_json: bool, nats_url: str | None) -> None:
        """Show a job: phase, attempts with node, state and failure reason.

        Exits 3 if there is no such job, 6 if the dispatcher refused it (it has no record; the
        error names its dead letter)."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                record = await client.get(job_id)
                if record is None:
                    why = f"no job {job_id} (not submitted, or not accepted yet)"
                    raise await _unknown(client, job_id, why)
            if as_json:
                _echo_json(record.model_dump(mode="json"))
                return
            click.echo(
                f"{record.spec.id}: {record.phase}"
                + (f" ({record.reason}: {record.message})" if record.reason else "")
            )
            if record.phase == contract.JobPhase.QUEUED and record.waiting_reason:
                click.echo(f"  waiting: {record.waiting_reason}")
            for line in attempt_lines(record):
                click.echo(line)

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @click.option("--attempt", type=click.IntRange(min=1), default=None,
                  help="Which attempt (1 is the first). Default: the current one.")
    @click.option("--follow", "-f", is_flag=True,
                  help="Keep printing as the attempt writes, until it ends (waits for it to start).")
    @clibase.nats_option
    def logs(job_id: str, attempt: int | None, follow: bool, nats_url: str | None) -> None:
        """Print the output (stdout and stderr) of a job's attempt.

        The output is read from the pod's node through a dispatcher. Embedded nodes keep pod logs
        on disk after the pod is gone; on Kubernetes a log lives as long as its pod, which jobq
        deletes once the attempt ends. When the log is gone, the last lines jobq kept of a failed
        attempt are printed instead, with a note on stderr. Exits 3 when the job is unknown, 4
        when no dispatcher answers (in time), 1 when the log is gone and nothing of it was kept.
        """

        async def go() -> None:
            printed = ""
            async with clibase.client(nats_url) as client:
                try:
                    async for text in client.logs(job_id, attempt=attempt, follow=follow):
                        click.echo(text, nl=False)
                        printed = text
                except LogUnavailable as exc:
                    if exc.tail:
                        if printed and not printed.endswith("\n"):
                            click.echo()
                        click.echo(exc.tail)
                        click.echo(f"jobq: {exc}; shown: the last lines jobq kept of it", err=True)
                    elif printed or not exc.finished:
                        click.echo(f"jobq: {exc}", err=True)
                    else:
                        raise click.ClickException(f"{exc}; no output was kept") from None

        clibase.run(go())

    @cli.command("list")
    @click.option("--state", type=click.Choice([p.value for p in contract.JobPhase]), default=None)
    @click.option("--queue", default=None)
    @clibase.nats_option
    def list_(state: str | None, queue: str | None, nats_url: str | None) -> None:
        """List jobs, oldest first."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                records = await client.list()
            for record in records:
                if (state is None or record.phase == state) and (queue is None or record.spec.queue == queue):
                    click.echo(_record_line(record))

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @click.option("--wait", is_flag=True, help="Wait for the job to finish.")
    @wait_timeout_option
    @clibase.nats_option
    def result(job_id: str, wait: bool, timeout: float | None, nats_url: str | None) -> None:
        """Print a finished job's accepted result as JSON.

        Exits 1 if the job ended dead or cancelled, 3 if there is no such job, 6 if the dispatcher
        refused it, and with --wait 5 if --timeout runs out first (the job goes on)."""
        _check_wait(wait, timeout)

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                record = await client.get(job_id)
                if record is None:
                    raise await _unknown(client, job_id, f"no job {job_id}")
                if not record.phase.is_terminal:
                    if not wait:
                        raise click.ClickException(f"job {job_id} is {record.phase}; use --wait")
                    record = (await client.wait([job_id], timeout=timeout))[job_id]
                _echo_json((await client.result_of(record)).model_dump(mode="json"))

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @clibase.nats_option
    def cancel(job_id: str, nats_url: str | None) -> None:
        """Stop a queued or running job; it ends `cancelled`."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                record = await client.cancel(job_id)
            if record.phase.is_terminal:
                click.echo(f"{job_id} already finished: {record.phase}")
            else:
                click.echo(f"{job_id}: cancellation requested")

        clibase.run(go())

    @cli.command()
    @click.option(
        "--kind",
        type=click.Choice(["job", "event", "result", "dead-letter"]),
        default="job",
        show_default=True,
    )
    def schema(kind: str) -> None:
        """Print the JSON Schema of a message (default: the job submission)."""
        _echo_json(contract.json_schema(kind))  # type: ignore[arg-type]


wait_timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    help="With --wait: give up waiting after this long (exit code 5); the job goes on.")


def _json_arg(value: str, *, option: str) -> Any:
    """JSON given inline, or as @FILE (@- for stdin): one argument string is at most 128 KiB."""
    if value.startswith("@"):
        try:
            with click.open_file(value[1:], "r", encoding="utf-8") as handle:
                value = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc}", param_hint=option) from None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None


def _check_wait(wait: bool, timeout: float | None, *, hint: str = "") -> None:
    if timeout is not None and not wait:
        raise click.UsageError(f"--timeout is how long --wait waits: give --wait too{hint}")


def _problems(exc: ValidationError) -> str:
    return "invalid job: " + "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg']}" for err in exc.errors()
    )
