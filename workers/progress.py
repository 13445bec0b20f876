"""An attempt's progress, kept for readers: ``contract.AttemptProgress`` in KV ``jobq_progress``.

Heartbeats carry progress too, but they are core NATS and not stored; the API, the dashboard,
the CLI and the SDK read this key instead. The pod writes only its own attempt's key
(``contract.progress_key``; NATS permissions refuse any other), only when the task reported a
change, at most once every ``interval_s`` seconds, and once more when the attempt ends
(``flush``). A lost write is logged and never fails the attempt. See docs/design/progress.md.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.js.errors
import structlog
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from broker import contract
from workers import heartbeat

log = structlog.get_logger("workers.progress")

INTERVAL_S = 2.0
"""At most one progress write per this many seconds (a task may report thousands of steps)."""
WRITE_TIMEOUT_S = 5.0
FINAL_TIMEOUT_S = 2.0
"""The last write, as the attempt ends, waits at most this long (it must not hold up the exit)."""


class ProgressWriter:
    """Writes one attempt's progress; ``run()`` until ``close()``, then ``flush()`` for the last.

    ``run`` is stopped by ``close``, not by cancelling its task: a cancel that arrives as a write
    completes can be swallowed on its way through nats-py and ``asyncio.wait_for`` (Python 3.11),
    and a runner awaiting the cancelled task would then wait for ever, its result written and its
    pod never exiting."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        job_id: str,
        attempt: int,
        progress: heartbeat.ProgressReporter,
        interval_s: float = INTERVAL_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"progress interval must be positive, not {interval_s}")
        self._js = js
        self._job_id = job_id
        self._attempt = attempt
        self._progress = progress
        self._interval_s = interval_s
        self._key = contract.progress_key(job_id, attempt)
        self._kv: KeyValue | None = None
        self._written: tuple[float, str] | None = None
        self._closing = asyncio.Event()
        self._failing = False
        self.writes = 0
        """Progress values stored."""

    async def run(self) -> None:
        """Store the latest progress every ``interval_s`` seconds when it changed; return soon
        after ``close()`` (at most one write's timeout later)."""
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._closing.wait()
            if not self._closing.is_set():
                await self.flush()

    def close(self) -> None:
        """Make ``run`` return."""
        self._closing.set()

    async def flush(self, *, timeout_s: float = WRITE_TIMEOUT_S) -> None:
        """Store the latest progress now if it changed since the last write, giving up after
        ``timeout_s`` seconds; never raises."""
        latest = self._progress.latest()
        if latest is None or latest[:2] == self._written:
            return
        fraction, message, at = latest
        value = contract.AttemptProgress(
            job_id=self._job_id, attempt=self._attempt, fraction=fraction, message=message, at=at
        )
        try:
            async with asyncio.timeout(timeout_s):
                await self._put(value.model_dump_json().encode())
        except Exception as exc:  # progress is best effort: nothing here may fail the attempt
            if not self._failing:
                log.warning("progress_not_written", key=self._key, error=repr(exc))
            self._failing = True
            return
        if self._failing:
            log.info("progress_written_again", key=self._key)
        self._failing = False
        self._written = (fraction, message)
        self.writes += 1

    async def _put(self, payload: bytes) -> None:
        kv = await self._bucket()
        await kv.put(self._key, payload)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(contract.BUCKET_PROGRESS)
            except nats.js.errors.BucketNotFoundError:  # a runner started on its own (tests)
                self._kv = await self._js.create_key_value(
                    bucket=contract.BUCKET_PROGRESS, history=1, ttl=contract.PROGRESS_MAX_AGE_S
                )
        return self._kv
