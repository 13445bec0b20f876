"""Who gets free capacity first when jobs wait for it: higher priority, then disrupted jobs.

A job whose attempt was lost to a node failure was already running; it should not queue behind
work that has not started yet, or recovery after a node loss would be as slow as the backlog.
Among jobs of equal standing nobody blocks anybody (no head-of-line blocking): whoever fits
first runs. Waiters that stop asking (finished, cancelled) drop out after ``ttl_s``.
"""

from __future__ import annotations

import time

from broker import contract

Key = tuple[int, int]


def standing(record: contract.JobRecord) -> Key:
    """Smaller is better: priority first, then 'was disrupted'."""
    return (-record.spec.priority, 0 if record.disruptions else 1)


class Admission:
    def __init__(self, *, ttl_s: float = 2.0) -> None:
        self._ttl_s = ttl_s
        self._waiting: dict[str, tuple[Key, float]] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, (_, seen) in self._waiting.items() if now - seen > self._ttl_s]:
            del self._waiting[job_id]

    def blocked(self, record: contract.JobRecord) -> bool:
        """True if a better-standing job is waiting for capacity."""
        self._expire()
        mine = standing(record)
        return any(key < mine for job_id, (key, _) in self._waiting.items() if job_id != record.spec.id)

    def waiting(self, record: contract.JobRecord) -> None:
        self._waiting[record.spec.id] = (standing(record), time.monotonic())

    def admitted(self, job_id: str) -> None:
        self._waiting.pop(job_id, None)

    def best(self, n: int) -> list[str]:
        self._expire()
        return [job_id for job_id, _ in sorted(self._waiting.items(), key=lambda item: item[1])[:n]]

    def __len__(self) -> int:
        return len(self._waiting)
