"""An in-memory index of every job record, kept current by a KV watch and by our own writes.

It answers "which jobs are not finished" (resync), "how many run in this queue" (queue limits)
and the API's listings without a round trip per job. The first two are kept as each record
arrives, so asking costs nothing however many jobs are stored.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

from broker import contract


class JobIndex:
    def __init__(self) -> None:
        self._records: dict[str, tuple[contract.JobRecord, int]] = {}
        self._listeners: list[Callable[[contract.JobRecord | None, contract.JobRecord], None]] = []
        self._removal_listeners: list[Callable[[str], None]] = []
        self._active: set[str] = set()
        self._running: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._records)

    def subscribe(self, listener: Callable[[contract.JobRecord | None, contract.JobRecord], None]) -> None:
        """Call ``listener(before, after)`` on every change that reaches the index."""
        self._listeners.append(listener)

    def put(self, record: contract.JobRecord, revision: int) -> None:
        known = self._records.get(record.spec.id)
        if known is not None and known[1] >= revision:
            return
        self._records[record.spec.id] = (record, revision)
        before = known[0] if known else None
        self._count(before, -1)
        self._count(record, +1)
        for listener in self._listeners:
            listener(before, record)

    def subscribe_removed(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(job_id)`` when a record is deleted (expired, docs/design/retention.md)."""
        self._removal_listeners.append(listener)

    def remove(self, job_id: str) -> None:
        """Forget a record that was deleted from the bucket (the KV watch saw its marker)."""
        known = self._records.pop(job_id, None)
        if known is None:
            return
        self._count(known[0], -1)
        self._active.discard(job_id)
        for listener in self._removal_listeners:
            listener(job_id)

    def get(self, job_id: str) -> contract.JobRecord | None:
        known = self._records.get(job_id)
        return known[0] if known else None

    def records(self) -> Iterator[contract.JobRecord]:
        return (record for record, _ in self._records.values())

    def active_ids(self) -> list[str]:
        return list(self._active)

    def running_in(self, queue: str) -> int:
        return self._running[queue]

    def _count(self, record: contract.JobRecord | None, delta: int) -> None:
        if record is None:
            return
        if record.phase == contract.JobPhase.RUNNING:
            self._running[record.spec.queue] += delta
        if delta > 0 and not record.phase.is_terminal:
            self._active.add(record.spec.id)
        elif delta > 0:
            self._active.discard(record.spec.id)

    def count_by_phase(self) -> dict[str, collections.Counter[str]]:
        """queue -> phase -> count."""
        counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for record in self.records():
            counts[record.spec.queue][record.phase.value] += 1
        return counts
