"""`jobq chaos list` and `jobq chaos run`: Chaos Toolkit experiments against the embedded stack.

Registered on the ``jobq`` group by ``submitter.cli``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from submitter import output


def _parse_vars(pairs: tuple[str, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--var")
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return found


def register(group: click.Group) -> None:
    """Add the ``chaos`` group to ``group``."""
    group.add_command(chaos)


@click.group()
def chaos() -> None:
    """Chaos experiments: kill nodes, dispatchers and brokers on purpose, prove the work recovers."""

@chaos.command("list")
@output.output_option()
def list_(output_format: str) -> None:
    """The bundled experiments: name and title."""
    from chaos import runner

    rows = [{"name": name, "title": title} for name, title in runner.list_experiments()]
    output.emit(rows, output_format, columns=["name", "title"])

@chaos.command("run")
@click.argument("experiment")
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(path_type=Path),
    default=Path("journal.json"),
    show_default=True,
    help="Where to write Chaos Toolkit's journal.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write an HTML report here.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Stack data dir (default: a fresh .jobq/chaos-<experiment>; with --nats: .jobq).",
)
@click.option(
    "--nats",
    "nats_url",
    default=None,
    metavar="URL",
    help="Run against this running stack (e.g. `jobq up`) instead of starting one.",
)
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an experiment configuration value (e.g. jobs=50, slo_s=5).",
)
@click.option(
    "--env",
    "stack_env",
    multiple=True,
    metavar="JOBQ_X=VALUE",
    help="Extra setting for the stack we start (e.g. JOBQ_NODE_TIMEOUT_S=2).",
)
def run_(
    experiment: str,
    journal_path: Path,
    report_path: Path | None,
    data_dir: Path | None,
    nats_url: str | None,
    variables: tuple[str, ...],
    stack_env: tuple[str, ...],
) -> None:
    """Run EXPERIMENT (a name from `jobq chaos list` or a path) and judge it.

    Starts the embedded stack the experiment needs (unless --nats names a running one), runs
    the experiment with Chaos Toolkit, writes the journal (and --report), and exits 1 unless
    the steady state held before and after and every activity succeeded.
    """
    from chaoslib.exceptions import ChaosException

    from chaos import runner

    env = dict(_parse_vars(tuple(stack_env)))
    try:
        outcome = runner.run(
            experiment,
            journal_path=journal_path,
            report_path=report_path,
            data_dir=data_dir,
            nats_url=nats_url,
            stack_env={k: str(v) for k, v in env.items()},
            config_vars=_parse_vars(variables),
        )
    except (runner.ExperimentNotFound, ChaosException) as exc:
        raise click.ClickException(str(exc)) from None
    verdict = "PASSED" if outcome.passed else "FAILED"
    click.echo(f"{outcome.name}: {verdict} in {outcome.seconds}s")
    for rec in outcome.snapshot.get("recoveries", []):
        click.echo(
            f"  {rec['kind']:<16} {rec['target']:<10} recovery {rec['seconds']}s"
            + (f", {rec['affected_jobs']} job(s) moved" if "affected_jobs" in rec else "")
        )
    for problem in outcome.problems:
        click.echo(f"  problem: {problem}")
    click.echo(f"  journal {journal_path}" + (f", report {report_path}" if report_path else ""))
    if not outcome.passed:
        sys.exit(1)
