"""`jobq dlq`: look at dead letters and re-drive dead jobs."""

from __future__ import annotations

from pathlib import Path

import click

from submitter import clibase


def register(cli: click.Group) -> None:
    @cli.group()
    def dlq() -> None:
        """Dead letters: jobs that gave up, and submissions that could not be read."""

    @dlq.command("list")
    @click.option("--limit", default=50, show_default=True)
    @clibase.nats_option
    def list_(limit: int, nats_url: str | None) -> None:
        """Newest dead letters first: sequence, job, reason, message."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                letters = await client.dead_letters(limit=limit)
            if not letters:
                click.echo("no dead letters")
            for seq, letter in letters:
                click.echo(f"{seq:>6} {letter.job_id or '-':<26} {letter.reason:<14} {letter.message[:100]}")

        clibase.run(go())

    @dlq.command("original")
    @click.argument("seq", type=int)
    @click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write it here, not to stdout.")
    @clibase.nats_option
    def original(seq: int, output: str | None, nats_url: str | None) -> None:
        """The whole original message of dead letter SEQ (a letter itself carries an excerpt)."""

        async def go() -> bytes:
            async with clibase.client(nats_url) as client:
                letter = await client.dead_letter(seq)
                if letter is None:
                    raise click.ClickException(f"no dead letter {seq}")
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
        """Give a dead job fresh retry budgets and queue it again (its history is kept)."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                await client.retry_dead(job_id)
            click.echo(f"{job_id}: queued again")

        clibase.run(go())
