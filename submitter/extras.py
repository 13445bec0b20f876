"""What the optional parts of jobq need, and what a command says when its part is not installed.

``pip install jobq`` is the light client: the SDK (``from jobq import JobqClient``) and the
client commands, on nats-py, pydantic and click alone. Running jobq takes extras
(``pyproject.toml``): ``server`` (the embedded stack, dispatcher, node agents, task runner and its
ML tasks), ``watch`` (``jobq watch``), ``kubernetes``, ``chaos`` and ``tf`` (TensorFlow for the
``tf.train`` task; each with ``server``), ``all``.

Every subcommand is listed in ``jobq --help`` either way. One whose extra is missing stops before
it runs with one line naming the extra to install, exit 2 (``ExtraMissing``, mapped by
``clibase.cli_error``), never an ImportError's traceback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

EXTRAS: Mapping[str, tuple[str, ...]] = {
    "server": ("structlog", "aiohttp", "rich", "prometheus_client", "sklearn", "cryptography"),
    "watch": ("aiohttp", "rich"),
    "kubernetes": ("kubernetes_asyncio",),
    "chaos": ("chaoslib",),
    "tf": ("tensorflow",),
}
"""Each extra's import packages that jobq uses (the nats-server binary of ``server`` is looked up
on PATH when a stack starts: broker/embedded/natsserver.py)."""

COMMAND_EXTRAS: Mapping[str, tuple[str, ...]] = {
    "up": ("server",),
    "demo": ("server",),
    "dispatcher": ("server",),
    "nats-auth": ("server",),
    "node-agent": ("server",),
    "kubelet": ("server", "kubernetes"),
    "dev-cluster": ("server", "kubernetes"),
    "chaos": ("server", "chaos"),
    "watch": ("watch",),
}
"""The extras each server-side subcommand needs; the other subcommands need none."""


class ExtraMissing(Exception):
    """A command needs an extra that is not installed; the message says which one to install."""


def install_hint(extras: Iterable[str]) -> str:
    return f"pip install 'jobq[{','.join(extras)}]'"


def missing(extra: str) -> tuple[str, ...]:
    """The import packages of ``extra`` that are not installed (none: it is installed)."""
    return tuple(module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None)


def missing_extras(command: str) -> tuple[str, ...]:
    """The extras ``command`` needs that are not installed."""
    return tuple(extra for extra in COMMAND_EXTRAS.get(command, ()) if missing(extra))


def refusal(command: str, extras: tuple[str, ...]) -> ExtraMissing:
    modules = sorted({m for extra in extras for m in missing(extra)})
    what = " and ".join(f"the '{extra}' extra" for extra in extras)
    return ExtraMissing(
        f"jobq {command} needs {what}, not installed here (no {', '.join(modules)}): {install_hint(extras)}"
    )


def for_missing_module(exc: ModuleNotFoundError) -> ExtraMissing | None:
    """The ExtraMissing for an import of a module that an extra provides, else None."""
    top = (exc.name or "").partition(".")[0]
    extra = next((extra for extra, modules in EXTRAS.items() if top in modules), None)
    if extra is None:
        return None
    return ExtraMissing(f"this needs the '{extra}' extra (no module {top}): {install_hint([extra])}")


def guard(group: click.Group) -> None:
    """Make each of ``group``'s server-side subcommands whose extras are missing stop with
    ExtraMissing when invoked (``--help`` still works), and list them in ``group``'s epilog."""
    absent: dict[tuple[str, ...], list[str]] = {}
    for name, command in group.commands.items():
        extras = missing_extras(name)
        if extras and command.callback is not None:
            command.callback = _refusing(name, extras)
            absent.setdefault(extras, []).append(name)
    if absent:
        lines = [f"  {', '.join(names)}: {install_hint(extras)}" for extras, names in absent.items()]
        heading = "Not installed here (the light client: the SDK and the client commands):"
        group.epilog = "\b\n" + "\n".join([heading, *lines])


def placeholder(name: str, summary: str) -> click.Command:
    """A command that is listed (``summary``) but only says which extra to install: for a
    subcommand whose module cannot even be imported without its extra."""
    return click.Command(
        name,
        help=summary,
        callback=_refusing(name, missing_extras(name)),
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


def _refusing(name: str, extras: tuple[str, ...]) -> Callable[..., Any]:
    def refuse(*_: Any, **__: Any) -> None:
        raise refusal(name, extras)

    return refuse
