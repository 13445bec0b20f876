"""The age of the oldest waiting job per queue, kept as records change, read at scrape time.

A job waits while its record is ``queued`` (not yet placed, or between attempts); it has been
waiting since it could last run: ``max(submitted_at, the last attempt's finished_at,
not_before)``. A job in a retry backoff (``not_before`` ahead) is not waiting yet.

Cost: each index change is O(log n) (a heap push) in the queued jobs n of its queue, and memory is
one entry per queued job plus stale heap entries, compacted once they outnumber the live ones.
A scrape pops the stale tops and reads the minimum: amortised O(log n) per queue, never a scan
of every record.
"""

from __future__ import annotations

import datetime as dt
import heapq

from broker import contract


def waiting_since(record: contract.JobRecord) -> dt.datetime:
    """When ``record`` (queued) could last have run."""
    since = record.submitted_at
    current = record.current
    if current is not None and current.finished_at is not None:
        since = max(since, current.finished_at)
    if record.not_before is not None:
        since = max(since, record.not_before)
    return since


class OldestWaiting:
    """Queued jobs per queue, ordered by ``waiting_since``: a dict of the live entries and a
    min-heap with lazy deletion."""

    def __init__(self) -> None:
        self._since: dict[str, dict[str, dt.datetime]] = {}
        self._heaps: dict[str, list[tuple[dt.datetime, str]]] = {}

    def on_record(self, before: contract.JobRecord | None, after: contract.JobRecord) -> None:
        """The index listener: follow one record change."""
        queue, job_id = after.spec.queue, after.spec.id
        live = self._since.setdefault(queue, {})
        heap = self._heaps.setdefault(queue, [])
        if after.phase != contract.JobPhase.QUEUED:
            live.pop(job_id, None)
            return
        since = waiting_since(after)
        if live.get(job_id) == since:
            return
        live[job_id] = since
        heapq.heappush(heap, (since, job_id))
        if len(heap) > 2 * len(live) + 64:  # mostly stale: rebuild from the live entries, O(n) once
            self._heaps[queue] = [(t, j) for j, t in live.items()]
            heapq.heapify(self._heaps[queue])

    def ages(self, now: dt.datetime) -> dict[str, float]:
        """queue -> seconds the oldest waiting job has waited (0 with none), for every queue seen."""
        found: dict[str, float] = {}
        for queue, heap in self._heaps.items():
            live = self._since[queue]
            while heap and live.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)
            found[queue] = max(0.0, (now - heap[0][0]).total_seconds()) if heap else 0.0
        return found

    def waiting(self, queue: str) -> int:
        return len(self._since.get(queue, {}))
