"""When a finished job expires, and the expiry times of every kept job, earliest first.

``ExpiryHeap`` follows the job index (a listener on every record change and removal), so the
sweeper (``expiry.Sweeper``) asks only "what is due now, and when is the next one due": the cost
of a pass grows with the jobs that expire in it, never with the jobs kept (docs/design/retention.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
from collections.abc import Callable, Mapping

from broker import contract


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished jobs are kept: the job's own ``retention_s``, else its queue's, else the
    default (JOBQ_RETENTION_S, JOBQ_QUEUE_RETENTION)."""

    default_s: float = 7 * 86400.0
    queues: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def retention_s(self, spec: contract.JobSpec) -> float:
        if spec.retention_s is not None:
            return spec.retention_s
        return self.queues.get(spec.queue, self.default_s)

    def due_at(self, record: contract.JobRecord) -> dt.datetime | None:
        """When ``record`` expires; None while it is not finished (it never expires then). A
        record whose deletion has begun is due at once (a crashed deletion is finished)."""
        if record.expired_at is not None:
            return record.expired_at
        if not record.phase.is_terminal:
            return None
        ended = record.finished_at or record.updated_at
        return ended + dt.timedelta(seconds=self.retention_s(record.spec))


class ExpiryHeap:
    """Job id -> expiry time for every finished job, with the earliest on top (a heap with lazy
    deletion: a changed or removed job's old entry is skipped when it surfaces)."""

    def __init__(self, policy: RetentionPolicy, *, on_earlier: Callable[[], None] | None = None) -> None:
        self.policy = policy
        self._due: dict[str, dt.datetime] = {}
        self._heap: list[tuple[dt.datetime, str]] = []
        self._on_earlier = on_earlier or (lambda: None)
        """Called when a job becomes due earlier than every other: the sweeper's timer is too late."""

    def __len__(self) -> int:
        return len(self._due)

    def changed(self, before: contract.JobRecord | None, after: contract.JobRecord) -> None:
        """Index listener: ``after`` is the record as it is now."""
        self.set(after.spec.id, self.policy.due_at(after))

    def removed(self, job_id: str) -> None:
        """Index listener: the record of ``job_id`` is gone."""
        self.set(job_id, None)

    def set(self, job_id: str, due: dt.datetime | None) -> None:
        if due is None:
            self._due.pop(job_id, None)
            return
        if self._due.get(job_id) == due:
            return
        earliest = self.earliest()
        self._due[job_id] = due
        heapq.heappush(self._heap, (due, job_id))
        if len(self._heap) > 2 * len(self._due) + 64:  # mostly stale entries: rebuild
            self._heap = [(d, j) for j, d in self._due.items()]
            heapq.heapify(self._heap)
        if earliest is None or due < earliest:
            self._on_earlier()

    def earliest(self) -> dt.datetime | None:
        """The first expiry time, or None when no finished job is kept."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def take_due(self, now: dt.datetime, *, most: int) -> list[str]:
        """Up to ``most`` jobs due at ``now``, earliest first, taken off the heap (a job whose
        deletion fails is ``set`` again by the sweeper)."""
        taken: list[str] = []
        while len(taken) < most:
            due = self.earliest()
            if due is None or due > now:
                break
            _, job_id = heapq.heappop(self._heap)
            del self._due[job_id]
            taken.append(job_id)
        return taken
