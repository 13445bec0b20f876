"""One log stream through structlog (the ``server`` extra), for ``logsetup.configure``.

jobq's own structlog events and every library's standard ``logging`` records (aiohttp, nats-py,
kubernetes_asyncio, asyncio, chaostoolkit, warnings) are rendered by the same processors and
written to stderr through the same writer, so with JSON each stderr line is one object with
``level``, ``event``, ``logger`` and ``timestamp`` (a library's traceback included, as
``exception``). The standard library's records reach structlog through
``structlog.stdlib.ProcessorFormatter`` on a handler of the root logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


class NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that keeps the name given to ``structlog.get_logger(name)``, so that
    ``add_logger_name`` can say which logger spoke, as it does for a library's records."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedPrintLogger:
        return NamedPrintLogger(self._file, str(args[0]) if args else "jobq")


class _StdlibHandler(logging.Handler):
    """Root handler: a library's record, rendered by the ProcessorFormatter, written by the same
    PrintLogger (and so under the same lock) as structlog's own events: lines never interleave."""

    def __init__(self, out: structlog.PrintLogger) -> None:
        super().__init__()
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.msg(self.format(record))
        except Exception:
            self.handleError(record)


def configure(*, fmt: str, level: str, component: str | None, cache: bool, library_level: str | None) -> None:
    """``logsetup.configure`` when structlog is installed (``fmt`` is ``json`` or ``console``)."""
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # A traceback as data, without each frame's locals: a library's frames hold credentials too.
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
    tail: list[structlog.typing.Processor] = [tracebacks] if fmt == "json" else []
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=_NamedPrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=cache,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    _route_stdlib_logging(structlog.PrintLogger(sys.stderr),
                          logging.getLevelName((library_level or level).upper()), formatter)
    if component:
        structlog.contextvars.bind_contextvars(component=component)


def _route_stdlib_logging(out: structlog.PrintLogger, level: int, formatter: logging.Formatter) -> None:
    """Every standard ``logging`` record at ``level`` or above goes to ``out`` through
    ``formatter``; a second call replaces the first's handler. Python's warnings too."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(handler)
    handler = _StdlibHandler(out)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
