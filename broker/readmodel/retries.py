"""Retries per failure reason over a recent time window (the dashboard's retry timeline)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from pydantic import BaseModel

from broker import contract
from broker.readmodel.times import Time


class RetryTimeline(BaseModel):
    start: Time
    end: Time
    bucket_seconds: float
    series: dict[str, list[int]]
    """Reason -> retries per bucket, oldest bucket first."""


def timeline(
    records: Iterable[contract.JobRecord], *, now: dt.datetime, window_s: int, buckets: int = 30
) -> RetryTimeline:
    """Retries per reason in ``buckets`` equal slices of the last ``window_s`` seconds.

    A retry is a failed attempt that another attempt follows, or the failed current attempt of
    a job that is queued again (waiting out its backoff)."""
    step = window_s / buckets
    start = now - dt.timedelta(seconds=window_s)
    series: dict[str, list[int]] = {}
    for record in records:
        for n, attempt in enumerate(record.attempts):
            retried = n + 1 < len(record.attempts) or record.phase == contract.JobPhase.QUEUED
            if (
                attempt.state != contract.AttemptState.FAILED
                or attempt.reason is None
                or not retried
                or attempt.finished_at is None
                or attempt.finished_at < start
            ):
                continue
            slot = min(buckets - 1, int((attempt.finished_at - start).total_seconds() // step))
            series.setdefault(attempt.reason.value, [0] * buckets)[slot] += 1
    return RetryTimeline(start=start, end=now, bucket_seconds=step, series=series)
