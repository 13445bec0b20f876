"""`jobq dlq`: look at dead letters and re-drive dead jobs."""

from __future__ import annotations

from pathlib import Path

import click

from submitter import clibase, output

LETTER_COLUMNS = (
    output.Column("SEQ", "seq"),
    output.Column("JOB", "job_id"),
    output.Column("REASON", "reason"),
    output.Column("AT", lambda letter: str(letter.get("at") or "")[:19].replace("T", " ")),
    output.Column("MESSAGE", "message", max_width=100),
)
"""`jobq dlq list`'s table (the whole letters with -o json or yaml)."""


def register(cli: click.Group) -> None:
    @cli.group()
    def dlq() -> None:
        """Dead letters: jobs that gave up, and submissions that could not be read."""

    @dlq.command("list")
    @click.option("--limit", default=50, show_default=True, help="At most this many (the newest).")
    @output.output_option()
    @clibase.nats_option
    def list_(limit: int, output_format: str, nats_url: str | None) -> None:
        """Newest dead letters first: sequence, job, reason, time, message (-o json or yaml: the
        whole letters, each with its "seq")."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                letters = await client.dead_letters(limit=limit)
            rows = [{"seq": seq, **letter.model_dump(mode="json")} for seq, letter in letters]
            output.emit(rows, output_format, columns=LETTER_COLUMNS)

        clibase.run(go())

    @dlq.command("show")
    @click.argument("seq", type=int)
    @output.output_option()
    @clibase.nats_option
    def show(seq: int, output_format: str, nats_url: str | None) -> None:
        """Dead letter SEQ: why, the attempts, an excerpt of the original (the whole original:
        `jobq dlq original SEQ`). Exits 3 if there is no such letter."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                letter = await client.dead_letter(seq)
            if letter is None:
                raise clibase.CliError(f"no dead letter {seq}", clibase.EXIT_NOT_FOUND)
            output.emit({"seq": seq, **letter.model_dump(mode="json")}, output_format)

        clibase.run(go())

    @dlq.command("original")
    @click.argument("seq", type=int)
    @click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write it here, not to stdout.")
    @clibase.nats_option
    def original(seq: int, output: str | None, nats_url: str | None) -> None:
        """The whole original message of dead letter SEQ, as it was (a letter itself carries an
        excerpt). Exits 3 if there is no such letter, 1 if it keeps no original."""

        async def go() -> bytes:
            async with clibase.client(nats_url) as client:
                letter = await client.dead_letter(seq)
                if letter is None:
                    raise clibase.CliError(f"no dead letter {seq}", clibase.EXIT_NOT_FOUND)
                data = await client.dead_letter_original(letter)
            if data is None:
                raise click.ClickException(f"dead letter {seq} keeps no original (or it expired)")
            return data

        data: bytes = clibase.run(go())
        if output:
            Path(output).write_bytes(data)
        else:
            click.echo(data, nl=False)  # bytes go to the binary stdout as they are

    @dlq.command("retry")
    @click.argument("job_id")
    @clibase.nats_option
    def retry(job_id: str, nats_url: str | None) -> None:
        """Give a dead job fresh retry budgets and queue it again (its history is kept). Exits 3
        if there is no such job."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                await client.retry_dead(job_id)
            click.echo(f"{job_id}: queued again")

        clibase.run(go())
