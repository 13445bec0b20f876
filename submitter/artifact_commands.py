"""`jobq artifacts`: list and download the artifacts of a job's accepted attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from submitter import clibase, output


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB")
    power = 0
    while size >= 1024 ** (power + 1) and power < len(units) - 1:
        power += 1
    return f"{size} B" if power == 0 else f"{size / 1024**power:.1f} {units[power]}"


COLUMNS = [
    output.Column("NAME", "name"),
    output.Column("SIZE", lambda row: _size(row["size"])),
    output.Column("SHA256", "sha256"),
    output.Column("ATTEMPT", "attempt"),
    output.Column("NOT SERVED BECAUSE", lambda row: row["problem"] or "", max_width=80),
]


def register(cli: click.Group) -> None:
    @cli.group()
    def artifacts() -> None:
        """Artifacts (trained models, predictions) a job's accepted attempt saved.

        Only the accepted attempt's artifacts are handed out, and only bytes with the SHA-256 its
        result lists: what a superseded attempt wrote never is. A job that has not succeeded has
        none yet."""

    @artifacts.command("list")
    @click.argument("job_id")
    @output.output_option(json_alias=True)
    @clibase.nats_option
    def list_(job_id: str, output_format: str, nats_url: str | None) -> None:
        """List the artifacts of a job's accepted attempt.

        One row each: name, size, sha256, attempt (and why one would not be served).

        Exits 3 if there is no such job, 1 if it has no accepted result (yet)."""

        async def go() -> None:
            async with clibase.client(nats_url) as client:
                found = await client.artifacts(job_id)
            rows: list[dict[str, Any]] = [a.model_dump(mode="json") for a in found]
            if not rows and output_format == "table":
                click.echo(f"job {job_id} saved no artifacts", err=True)
            output.emit(rows, output_format, columns=COLUMNS)

        clibase.run(go())

    @artifacts.command("get")
    @click.argument("job_id")
    @click.argument("name")
    @click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write it to this file (replaced if it exists), not to stdout.",
    )
    @clibase.nats_option
    def get(job_id: str, name: str, output: Path | None, nats_url: str | None) -> None:
        """Download one artifact of a job's accepted attempt.

        NAME as `jobq artifacts list` shows it; the bytes go to stdout, or to FILE with -o.

        The bytes are checked against the SHA-256 the attempt's result lists before anything is
        written. Exits 3 if there is no such job, 1 if it has no accepted result (yet), no such
        artifact, or the stored bytes are not the accepted attempt's."""

        async def go() -> bytes:
            async with clibase.client(nats_url) as client:
                return await client.artifact(job_id, name)

        data: bytes = clibase.run(go())
        if output is None:
            click.echo(data, nl=False)  # bytes go to the binary stdout as they are
            return
        partial = output.with_name(f".{output.name}.part")
        partial.write_bytes(data)
        partial.replace(output)
        click.echo(f"{output}: {len(data)} bytes ({name} of job {job_id})", err=True)
