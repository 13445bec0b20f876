"""What ``jobq submit`` makes of its command line: the fields of one JobSpec, from a job file
(``-f``), the options, and a program after ``--``. Validation is the contract's own (JobSpec);
this module only gathers the fields and words the problems as one line with each field's path."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click
from pydantic import ValidationError

from broker import contract


def json_arg(value: str, *, option: str) -> Any:
    """JSON given inline, or as @FILE (@- for stdin): one argument string is at most 128 KiB."""
    if value.startswith("@"):
        value = read_text(value[1:], option=option)
    return parse_json(value, option=option)


def read_text(path: str, *, option: str) -> str:
    """The text of ``path`` (``-``: stdin), or a usage error naming ``option``."""
    try:
        with click.open_file(path, "r", encoding="utf-8") as handle:
            return str(handle.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint=option) from None


def parse_json(text: str, *, option: str) -> Any:
    """Strict JSON (NaN and Infinity are no JSON numbers), or a usage error naming ``option``."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None


def job_file(path: str) -> dict[str, Any]:
    """The JobSpec fields in job file ``path`` (``-``: stdin): one JSON object, as published."""
    found = parse_json(read_text(path, option="-f"), option="-f")
    if not isinstance(found, dict):
        raise click.BadParameter(f"{path} holds a JSON {type(found).__name__}, not a job (a JSON object; "
                                 "see `jobq schema`)", param_hint="-f")
    return found


def spec_fields(from_file: Mapping[str, Any], *, program: tuple[str, ...], command: tuple[str, ...],
                options: Mapping[str, Any], cpu: float | None, memory: str | None, gpu: int | None,
                max_attempts: int | None) -> dict[str, Any]:
    """The job's fields: the file's, then every option given (None: not given) over them. A
    program after ``--`` is the job's ``command`` (as is the older repeated ``--command``)."""
    if program and command:
        raise click.UsageError("give the command after -- or with --command, not both")
    if (program or command) and options.get("task"):
        raise click.UsageError("give --task or a command (after --, or --command), not both")
    fields = {**from_file, **{k: v for k, v in options.items() if v is not None}}
    if program or command:
        fields["command"] = list(program or command)
        fields.pop("task", None)  # the file's task gives way to a command given here
    elif options.get("task") is not None:
        fields.pop("command", None)  # and its command to a task given here
    if cpu is not None or memory is not None or gpu is not None:
        defaults = contract.Resources()
        fields["resources"] = {"cpu": cpu or defaults.cpu, "memory": memory or defaults.memory,
                               "gpu": gpu or 0}
    if max_attempts is not None:
        retry = fields.get("retry")
        fields["retry"] = {**(retry if isinstance(retry, dict) else {}), "max_attempts": max_attempts}
    return fields


def problems(exc: ValidationError) -> str:
    """A JobSpec's validation errors in one line, each with its field's path."""
    return "invalid job: " + "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg']}" for err in exc.errors()
    )
