"""Who gets free room first when jobs wait for it: higher priority, then disrupted jobs.

A job whose attempt was lost to a node failure was already running; it should not queue behind
work that has not started yet, or recovery after a node loss would be as slow as the backlog.
Among jobs of equal standing nobody blocks anybody (no head-of-line blocking): whoever fits
first runs. Only jobs that *could* run once room frees wait in a line; a job that fits no node
at all (placement NEVER) blocks nobody. A waiter leaves when it is admitted or stops waiting.

A line is a waiting room that costs nothing while nobody moves: no timer per waiter, and every
operation is O(log n) or better (a backlog of 10,000 jobs is a queue's normal state), so the
dispatcher's work grows with the changes that free room, not with the number of waiters.
"""

from __future__ import annotations

import collections
import heapq
import itertools

from broker import contract

Key = tuple[int, int]


def standing(record: contract.JobRecord) -> Key:
    """Smaller is better: priority first, then 'was disrupted'."""
    return (-record.spec.priority, 0 if record.disruptions else 1)


class Admission:
    """One line of waiters, best standing first, then longest waiting."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[Key, int]] = {}
        self._heap: list[tuple[Key, int, str]] = []
        """Every (key, order, job) ever queued; entries no longer in ``_waiting`` are skipped
        (lazy removal) and swept out when they outnumber the live ones."""
        self._keys: collections.Counter[Key] = collections.Counter()
        """How many waiters stand at each key: there are few distinct keys (priorities)."""
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._waiting

    def blocked(self, record: contract.JobRecord) -> bool:
        """True if a better-standing job (not ``record`` itself) is waiting for room."""
        mine = standing(record)
        own = self._waiting.get(record.spec.id)
        return any(
            key < mine and count - (1 if own is not None and own[0] == key else 0) > 0
            for key, count in self._keys.items()
        )

    def waiting(self, record: contract.JobRecord) -> None:
        """``record`` waits for room (it keeps its place in line if it waited already)."""
        job_id = record.spec.id
        key = standing(record)
        known = self._waiting.get(job_id)
        if known is not None and known[0] == key:
            return
        order = known[1] if known is not None else next(self._order)
        if known is not None:
            self._drop_key(known[0])
        self._waiting[job_id] = (key, order)
        self._keys[key] += 1
        heapq.heappush(self._heap, (key, order, job_id))

    def admitted(self, job_id: str) -> bool:
        """It runs, or no longer waits for room. True if it was waiting."""
        known = self._waiting.pop(job_id, None)
        if known is None:
            return False
        self._drop_key(known[0])
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._waiting):
            self._heap = [(key, order, job) for job, (key, order) in self._waiting.items()]
            heapq.heapify(self._heap)
        return True

    def best(self, n: int) -> list[str]:
        """The ``n`` waiters first in line, without disturbing the line: O(n log n) plus the
        stale entries met on the way."""
        heap = self._heap
        found: list[str] = []
        frontier: list[tuple[tuple[Key, int, str], int]] = [(heap[0], 0)] if heap else []
        while frontier and len(found) < n:
            entry, i = heapq.heappop(frontier)
            key, order, job_id = entry
            if self._waiting.get(job_id) == (key, order):
                found.append(job_id)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return found

    def ids(self) -> list[str]:
        return list(self._waiting)

    def _drop_key(self, key: Key) -> None:
        self._keys[key] -= 1
        if self._keys[key] <= 0:
            del self._keys[key]
