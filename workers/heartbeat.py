"""Attempt heartbeats: ``contract.AttemptHeartbeat`` on core NATS, carrying the latest progress
(which ``workers.progress`` also stores, for readers: heartbeats are not kept).

The dispatcher treats an attempt whose heartbeats stop (while its node stays healthy) as lost,
so heartbeats run on the event loop, independent of the task, which runs in a thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
import time

import structlog
from nats.aio.client import Client as NATS

from broker import contract

log = structlog.get_logger("workers.heartbeat")

MAX_MESSAGE_CHARS = contract.MAX_PROGRESS_MESSAGE_CHARS
"""Progress messages are cut to this length to keep heartbeats small."""


class ProgressReporter:
    """The latest progress of a task; safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fraction: float | None = None
        self._message = ""
        self._at: dt.datetime | None = None

    def report(self, fraction: float, message: str = "") -> None:
        """Record ``fraction`` done (clamped to 0..1) and a short human-readable message."""
        fraction = float(fraction)
        if math.isnan(fraction):
            raise ValueError("progress must be a number between 0 and 1, not NaN")
        with self._lock:
            self._fraction = min(1.0, max(0.0, fraction))
            self._message = str(message)[:MAX_MESSAGE_CHARS]
            self._at = contract.utcnow()

    def snapshot(self) -> tuple[float | None, str]:
        with self._lock:
            return self._fraction, self._message

    def latest(self) -> tuple[float, str, dt.datetime] | None:
        """The latest report and when it was made (None before the first one)."""
        with self._lock:
            if self._fraction is None or self._at is None:
                return None
            return self._fraction, self._message, self._at


class Heartbeat:
    """Publishes one attempt's heartbeats; ``run()`` until cancelled, ``beat()`` for one more."""

    def __init__(self, nc: NATS, *, job_id: str, attempt: int, node: str | None,
                 progress: ProgressReporter, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, not {interval_s}")
        self._nc = nc
        self._job_id = job_id
        self._attempt = attempt
        self._node = node
        self._progress = progress
        self._interval_s = interval_s
        self._subject = contract.heartbeat_subject(job_id, attempt)
        self._failing = False
        self.sent = 0
        """Heartbeats handed to the client (they may still be in its buffer)."""

    def message(self) -> contract.AttemptHeartbeat:
        fraction, text = self._progress.snapshot()
        return contract.AttemptHeartbeat(job_id=self._job_id, attempt=self._attempt,
                                         node=self._node, progress=fraction, message=text)

    async def beat(self) -> None:
        """Publish one heartbeat now; failures are logged, never raised."""
        try:
            await self._nc.publish(self._subject, self.message().model_dump_json().encode())
        except Exception as exc:  # a lost heartbeat must not end the attempt
            if not self._failing:
                log.warning("heartbeat_failed", subject=self._subject, error=repr(exc))
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat_recovered", subject=self._subject)
        self._failing = False
        self.sent += 1

    async def run(self) -> None:
        """Beat every ``interval_s`` seconds (on a fixed schedule) until cancelled."""
        next_at = time.monotonic()
        while True:
            await self.beat()
            next_at = max(next_at + self._interval_s, time.monotonic())  # no burst after a stall
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
