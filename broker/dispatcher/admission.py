"""Who gets free capacity first when jobs wait for it: higher priority, then disrupted jobs.

A job whose attempt was lost to a node failure was already running; it should not queue behind
work that has not started yet, or recovery after a node loss would be as slow as the backlog.
Among jobs of equal standing nobody blocks anybody (no head-of-line blocking): whoever fits
first runs. Only jobs that *could* run once room frees wait here; a job that fits no node at
all (placement NEVER) blocks nobody. A waiter leaves when it is admitted or stops waiting.
"""

from __future__ import annotations

import itertools

from broker import contract

Key = tuple[int, int]


def standing(record: contract.JobRecord) -> Key:
    """Smaller is better: priority first, then 'was disrupted'."""
    return (-record.spec.priority, 0 if record.disruptions else 1)


class Admission:
    def __init__(self) -> None:
        self._waiting: dict[str, tuple[Key, int]] = {}
        self._order = itertools.count()

    def blocked(self, record: contract.JobRecord) -> bool:
        """True if a better-standing job is waiting for capacity."""
        mine = standing(record)
        return any(key < mine for job_id, (key, _) in self._waiting.items() if job_id != record.spec.id)

    def waiting(self, record: contract.JobRecord) -> None:
        """``record`` waits for room (it keeps its place in line if it waited already)."""
        known = self._waiting.get(record.spec.id)
        self._waiting[record.spec.id] = (standing(record), known[1] if known else next(self._order))

    def admitted(self, job_id: str) -> None:
        """It runs, or no longer waits for room."""
        self._waiting.pop(job_id, None)

    def best(self, n: int) -> list[str]:
        """The ``n`` waiters first in line: best standing, then longest waiting."""
        return [job_id for job_id, _ in sorted(self._waiting.items(), key=lambda item: item[1])[:n]]

    def __len__(self) -> int:
        return len(self._waiting)
