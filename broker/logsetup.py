"""structlog configuration shared by every jobq process (JSON by default, console on request)."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console", "auto"]
"""``auto``: console on a terminal, JSON otherwise."""


def configure(*, fmt: LogFormat = "json", level: str = "INFO", component: str | None = None,
              cache: bool = False) -> None:
    """Log to stderr; stdout stays free for command output (summaries, JSON). ``cache`` keeps
    each logger's configuration from its first use (for a process that configures once)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
    if component:
        structlog.contextvars.bind_contextvars(component=component)
