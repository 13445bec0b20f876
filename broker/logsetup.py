"""Logging shared by every jobq process (JSON by default, console on request): one stream.

Through structlog (``broker/structlog_setup.py``) when it is installed: it comes with the
``server`` extra. The light client (``pip install jobq``: the SDK and the client commands) runs
without it: there ``get_logger`` hands out a stdlib logger that takes the same
``log.info("event", key=value)`` calls, and ``configure`` sends every logger to stderr as text or
JSON lines.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import sys
from typing import Any, Literal, Protocol

LogFormat = Literal["json", "console", "auto"]
"""``auto``: console on a terminal, JSON otherwise."""

HAVE_STRUCTLOG = importlib.util.find_spec("structlog") is not None
"""Whether structlog is installed (the ``server`` extra); without it logs go through stdlib logging."""


class KeyValueLogger(Protocol):
    """What jobq's modules call on a logger: a constant event name, the variable data as keys."""

    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


class _StdlibLogger:
    """A structlog-style logger over stdlib logging, for modules the light client imports."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, kw: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            keys = " ".join(f"{k}={v}" for k, v in kw.items())
            self._logger.log(level, f"{event} {keys}".rstrip(), extra={"jobq_event": event, "jobq_keys": kw})

    def debug(self, event: str, **kw: Any) -> None:
        self._log(logging.DEBUG, event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log(logging.INFO, event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log(logging.WARNING, event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log(logging.ERROR, event, kw)


def get_logger(name: str) -> KeyValueLogger:
    """structlog's logger ``name`` when structlog is installed, else a stdlib one taking the same calls."""
    if HAVE_STRUCTLOG:
        import structlog

        logger: KeyValueLogger = structlog.get_logger(name)
        return logger
    return _StdlibLogger(name)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "event": getattr(record, "jobq_event", record.getMessage()),
            "level": record.levelname.lower(),
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "logger": record.name,
            **getattr(record, "jobq_keys", {}),
        }
        return json.dumps(line, default=str)


def configure(*, fmt: LogFormat = "json", level: str = "INFO", component: str | None = None,
              cache: bool = False, library_level: str | None = None) -> None:
    """Log to stderr; stdout stays free for command output (summaries, JSON). ``cache`` keeps
    each logger's configuration from its first use (for a process that configures once).
    ``library_level``: the least level of the standard ``logging`` records shown (default:
    ``level``). Every library's ``logging`` records go to the same stream, in the same format."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if not HAVE_STRUCTLOG:
        _configure_stdlib(fmt=fmt, level=level, library_level=library_level)
        return
    from broker import structlog_setup

    structlog_setup.configure(fmt=fmt, level=level, component=component, cache=cache,
                              library_level=library_level)


def _configure_stdlib(*, fmt: str, level: str, library_level: str | None) -> None:
    """The light client's logging: jobq's records at ``level`` and every library's at
    ``library_level`` (default ``level``), on stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s [%(levelname)-7s] %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((library_level or level).upper())
    for name in ("jobq", "broker", "workers", "submitter", "chaos", "devcluster"):
        logging.getLogger(name).setLevel(level.upper())
    logging.captureWarnings(True)
