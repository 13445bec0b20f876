"""`jobq watch` subcommands (registered by submitter.commands)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import click


def register(cli: click.Group, *, nats_option: Callable[..., Any], resolve_nats: Callable[[str | None], str],
             run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
    """Placeholder until the watch commands land."""
