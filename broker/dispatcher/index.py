"""An in-memory index of every job record, kept current by a KV watch and by our own writes.

It answers "which jobs are not finished" (resync), "how many run in this queue" (queue limits)
and the API's listings without a round trip per job.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

from broker import contract


class JobIndex:
    def __init__(self) -> None:
        self._records: dict[str, tuple[contract.JobRecord, int]] = {}
        self._listeners: list[Callable[[contract.JobRecord | None, contract.JobRecord], None]] = []

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
        for listener in self._listeners:
            listener(before, record)

    def get(self, job_id: str) -> contract.JobRecord | None:
        known = self._records.get(job_id)
        return known[0] if known else None

    def records(self) -> Iterator[contract.JobRecord]:
        return (record for record, _ in self._records.values())

    def active_ids(self) -> list[str]:
        return [r.spec.id for r in self.records() if not r.phase.is_terminal]

    def running_in(self, queue: str) -> int:
        return sum(
            1 for r in self.records() if r.spec.queue == queue and r.phase == contract.JobPhase.RUNNING
        )

    def count_by_phase(self) -> dict[str, collections.Counter[str]]:
        """queue -> phase -> count."""
        counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for record in self.records():
            counts[record.spec.queue][record.phase.value] += 1
        return counts
