"""Client-side subcommands: submit, status, logs, list, result, cancel, schema.

Commands that print data take ``-o table|json|yaml`` (``submitter.output``); JSON and YAML give
the records as the SDK reads them, the table a view for people."""

from __future__ import annotations

import sys
from typing import Any

import click
from pydantic import ValidationError

from broker import contract
from submitter import clibase, jobspec_input, output
from submitter.checkpoint_text import attempt_checkpoint_lines, checkpoint_text, clock
from submitter.client import RECORD_GRACE_S, JobNotFound, JobqClient, LogUnavailable

STATUS_TAIL_LINES = 10
"""`jobq status` shows this many of a failed attempt's kept lines (`-o json` and `jobq logs` all)."""


def _attempt_cell(record: dict[str, Any]) -> str:
    attempts = record.get("attempts") or []
    return f"{attempts[-1].get('node') or '-'}#{attempts[-1]['number']}" if attempts else "-"


def _what_cell(record: dict[str, Any]) -> str:
    spec = record["spec"]
    return str(spec.get("task") or " ".join(spec.get("command") or ()))


RECORD_COLUMNS = (
    output.Column("ID", "spec.id"),
    output.Column("PHASE", "phase"),
    output.Column("QUEUE", "spec.queue"),
    output.Column("NODE#ATTEMPT", _attempt_cell),
    output.Column("SUBMITTED", lambda r: str(r.get("submitted_at") or "")[:19].replace("T", " ")),
    output.Column("TASK", _what_cell, max_width=60),
    output.Column("REASON", "reason"),
)
"""`jobq list`'s table: one job a row (the whole record with -o json or yaml)."""


async def _unknown(client: JobqClient, job_id: str, message: str) -> Exception:
    """What to raise for an id without a record: its refusal (exit 6) if a dead letter names it."""
    return await client.refusal(job_id) or JobNotFound(message)


def status_lines(
    record: contract.JobRecord,
    progress: contract.AttemptProgress | None = None,
    checkpoint: contract.AttemptCheckpoints | None = None,
) -> list[str]:
    """`jobq status`'s view: the job's phase (and why), its current attempt's progress and live
    checkpoint, why it waits, then its attempts (with their checkpoints and work lost)."""
    lines = [f"{record.spec.id}: {record.phase}"
             + (f" ({record.reason}: {record.message})" if record.reason else "")]
    if progress is not None:
        lines.append(progress_line(progress))
    if checkpoint is not None:
        lines.append(f"  checkpoint: {checkpoint_text(checkpoint)}")
    if record.phase == contract.JobPhase.QUEUED and record.waiting_reason:
        lines.append(f"  waiting: {record.waiting_reason}")
    return lines + attempt_lines(record)


def progress_line(progress: contract.AttemptProgress) -> str:
    """`jobq status`'s line for what the current attempt last reported."""
    at = clock(progress.at)
    message = f" {progress.message}" if progress.message else ""
    return f"  progress: {progress.fraction:.0%}{message} (attempt {progress.attempt}, at {at})"


def attempt_lines(record: contract.JobRecord) -> list[str]:
    """`jobq status` lines of each attempt: outcome, its checkpoints and work lost, a failed one's
    last output, why one waits."""
    lines = []
    for a in record.attempts:
        lines.append(
            f"  attempt {a.number}: {a.state:<9} node={a.node or '-':<8} "
            f"reason={a.reason or '-'} exit={a.exit_code if a.exit_code is not None else '-'}"
            f" {a.message}".rstrip()
        )
        lines.extend(attempt_checkpoint_lines(a))
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
    @click.argument("program", nargs=-1, type=click.UNPROCESSED, metavar="[-- PROGRAM [ARG]...]")
    @click.option("-f", "--file", "spec_file", metavar="FILE",
                  help="Submit the job in this JSON file (a JobSpec, see `jobq schema`; - reads stdin). "
                       "Options given as well override its fields; without an id it gets one.")
    @click.option("--task", help="Built-in task (see `jobq schema`) or module:function.")
    @click.option("--command", "command", multiple=True, hidden=True,
                  help="Deprecated: one word of a command job a time; give it after -- instead.")
    @click.option("--args", "args_json", default=None,
                  help="Task arguments as JSON, or @FILE to read the JSON from a file (@- stdin). "
                       "Default: {}.")
    @click.option("--queue", default=None, help="Queue (default: 'default').")
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
    @click.option("--priority", type=int, default=None, help="Higher runs first (default: 0).")
    @click.option("--id", "job_id", default=None, help="Job id (default: generated).")
    @click.option("--idempotency-key", default=None, help="Submissions with the same key run once.")
    @click.option("--wait", is_flag=True, help="Wait for the job and print its result.")
    @wait_timeout_option
    @output.output_option(default=None, help="Print the id (with --wait, the result) as table, json or "
                          "yaml. Default: the id alone, or the result as JSON.")
    @clibase.nats_option
    def submit(
        program: tuple[str, ...],
        spec_file: str | None,
        task: str | None,
        command: tuple[str, ...],
        args_json: str | None,
        queue: str | None,
        profile: str | None,
        cpu: float | None,
        memory: str | None,
        gpu: int | None,
        attempt_timeout: float | None,
        max_attempts: int | None,
        priority: int | None,
        job_id: str | None,
        idempotency_key: str | None,
        wait: bool,
        timeout: float | None,
        output_format: str | None,
        nats_url: str | None,
    ) -> None:
        """Submit one job: a task (--task), a command (jobq submit [OPTIONS] -- PROGRAM ARGS...),
        or the job in a file (-f job.json); prints its id (with --wait, its result as JSON).

        Exits 2 for an invalid job, naming each bad field (nothing is sent). With --wait it exits
        1 if the job ends dead or cancelled, 6 as soon as the dispatcher refuses it
        (JOBQ_QUEUE_POLICY, or invalid: no record, a dead letter saying why), and 5 if --timeout
        runs out first (the job goes on; follow it with `jobq status ID`)."""
        _check_wait(wait, timeout, hint=" (each attempt's deadline is --attempt-timeout)")
        options = {"task": task, "queue": queue, "profile": profile, "priority": priority, "id": job_id,
                   "idempotency_key": idempotency_key, "timeout_s": attempt_timeout,
                   "args": None if args_json is None else jobspec_input.json_arg(args_json, option="--args")}
        fields = jobspec_input.spec_fields(
            jobspec_input.job_file(spec_file) if spec_file else {}, program=program, command=command,
            options=options, cpu=cpu, memory=memory, gpu=gpu, max_attempts=max_attempts)
        url = clibase.resolve_nats(nats_url)
        try:  # before connecting: an invalid job is a usage error wherever NATS is
            spec = JobqClient(url).build_spec(fields)
        except ValidationError as exc:
            raise click.UsageError(jobspec_input.problems(exc)) from None

        async def go() -> None:
            async with JobqClient(url, auth=clibase.resolve_nats_auth(url)) as client:
                handle = await client.submit(spec)
                if not wait:
                    output.emit({"id": handle.id}, output_format or "table", text=lambda: [handle.id])
                    return
                if sys.stderr.isatty():  # chatter for people; scripts get one line, and only on error
                    click.echo(f"submitted {handle.id}; waiting", err=True)
                result = await handle.result(timeout=timeout)  # JobFailed, JobRefused, WaitTimeout: clibase
                output.emit(result.model_dump(mode="json"), output_format or "json")

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @output.output_option(json_alias=True)
    @clibase.nats_option
    def status(job_id: str, output_format: str, nats_url: str | None) -> None:
        """Show a job: phase, its current attempt's progress and checkpoint, attempts with node,
        state, failure reason, checkpoints and work lost (-o json or yaml: the whole record, with
        the progress as ``progress`` and the running attempt's checkpoint as ``checkpoint``).

        Exits 3 if there is no such job, 6 if the dispatcher refused it (it has no record; the
        error names its dead letter)."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                status = await client.status(job_id)
                if status is None:
                    why = f"no job {job_id} (not submitted, or not accepted yet)"
                    raise await _unknown(client, job_id, why)
            record = status.record
            whole = {**record.model_dump(mode="json"),
                     "progress": status.progress.model_dump(mode="json") if status.progress else None,
                     "checkpoint": status.checkpoint.model_dump(mode="json") if status.checkpoint else None}
            output.emit(whole, output_format,
                        text=lambda: status_lines(record, status.progress, status.checkpoint))

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @click.option("--attempt", type=click.IntRange(min=1), default=None,
                  help="Which attempt (1 is the first). Default: the current one.")
    @click.option("--follow", "-f", is_flag=True,
                  help="Keep printing as the attempt writes, until it ends (waits for it to start, and "
                       f"up to {RECORD_GRACE_S:g} s for a job published a moment ago to be recorded).")
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
    @click.option("--state", type=click.Choice([p.value for p in contract.JobPhase]), default=None,
                  help="Only jobs in this phase.")
    @click.option("--queue", default=None, help="Only jobs of this queue.")
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many (the newest).")
    @output.output_option()
    @clibase.nats_option
    def list_(state: str | None, queue: str | None, limit: int | None, output_format: str,
              nats_url: str | None) -> None:
        """List jobs, newest first (as GET /api/jobs): a table with a header, or with -o json or
        yaml the whole records."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                records = await client.list()
            chosen = [r for r in records
                      if (state is None or r.phase == state) and (queue is None or r.spec.queue == queue)]
            chosen.sort(key=lambda r: (r.submitted_at, r.spec.id), reverse=True)
            rows = [r.model_dump(mode="json") for r in chosen[:limit]]
            output.emit(rows, output_format, columns=RECORD_COLUMNS)

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @click.option("--wait", is_flag=True, help="Wait for the job to finish.")
    @wait_timeout_option
    @output.output_option(default="json")
    @clibase.nats_option
    def result(job_id: str, wait: bool, timeout: float | None, output_format: str, nats_url: str | None
               ) -> None:
        """Print a finished job's accepted result (JSON by default; -o table: field and value).

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
                output.emit((await client.result_of(record)).model_dump(mode="json"), output_format)

        clibase.run(go())

    @cli.command()
    @click.argument("job_id")
    @clibase.nats_option
    def cancel(job_id: str, nats_url: str | None) -> None:
        """Stop a queued or running job; it ends `cancelled`. Exits 3 if there is no such job."""

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
    @output.output_option(default="json", formats=("json", "yaml"))
    def schema(kind: str, output_format: str) -> None:
        """Print the JSON Schema of a message (default: the job submission)."""
        output.emit(contract.json_schema(kind), output_format)  # type: ignore[arg-type]


wait_timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    help="With --wait: give up waiting after this long (exit code 5); the job goes on.")


def _check_wait(wait: bool, timeout: float | None, *, hint: str = "") -> None:
    if timeout is not None and not wait:
        raise click.UsageError(f"--timeout is how long --wait waits: give --wait too{hint}")
