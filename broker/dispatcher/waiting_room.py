"""Where queued jobs wait without being looked at: each waits for the one change that can
release it, and that change wakes it (docs/design/dispatcher.md, "Waiting without polling").

* **Room on a node** (placement LATER): the node line (``Admission``). An attempt that ends, a
  pod that is created (the next in line may fit too) or free room seen by the capacity watcher
  wakes the first few in line, never the whole line.
* **No node big enough** (placement NEVER): woken only when the set of nodes changes (one joins,
  leaves, turns Ready or is resized); they hold nobody back.
* **A slot in its queue** (the queue's running limit is reached): one line per queue. A job of
  that queue that stops running wakes the first in its line; a woken job that no longer waits
  for the slot (it got an attempt, or waits for a node now) passes the wake-up to the next one.
* **A backoff** (``not_before``): a timer in the work queue, as any pass can ask for.

Running jobs whose pass asked for no timer (a command job without ``timeout_s``: nothing about
it changes but through its pod or node) are *watched*: the backend's watch wakes them when their
pod changes or their node is judged lost, so they too are left to the slow sweep.

None of these has a timer of its own, so a backlog costs nothing while nothing changes. The
dispatcher's resync skips parked jobs and looks at them only in its slow sweep
(``resync_parked_s``), the safety net for a missed wake-up. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable

from broker import contract
from broker.dispatcher import placement
from broker.dispatcher.action import Action
from broker.dispatcher.admission import Admission

QUEUE_FULL = "queue_full"
"""``Action.summary`` of a queued job that waits for a slot in its queue."""

WAKE_ON_END = 4
"""Waiters of the node line woken when an attempt ends (its room may take several small ones)."""


class WaitingRoom:
    def __init__(self, *, wake: Callable[[str], None]) -> None:
        self._wake = wake
        self.nodes = Admission()
        """Jobs that fit a node once room frees, in the order they get it."""
        self.unplaceable: set[str] = set()
        """Jobs that no Ready node can hold at all as things stand."""
        self.queues: dict[str, Admission] = collections.defaultdict(Admission)
        """Queue -> jobs waiting for a slot under that queue's running limit."""
        self.watched: set[str] = set()
        """Running jobs with no timer: woken by their pod's or node's changes only."""

    def __len__(self) -> int:
        return (len(self.nodes) + len(self.unplaceable) + len(self.watched)
                + sum(len(line) for line in self.queues.values()))

    def parked(self, job_id: str) -> bool:
        """The job waits for a change that will wake it: the resync may leave it alone."""
        return (job_id in self.nodes or job_id in self.unplaceable or job_id in self.watched
                or any(job_id in line for line in self.queues.values()))

    def blocked(self, record: contract.JobRecord) -> bool:
        """A better-standing job waits for room first: ``record`` must not take it."""
        return self.nodes.blocked(record)

    def track(self, record: contract.JobRecord, action: Action, *, timed: bool) -> None:
        """After a pass that decided ``action`` and asked for another look (``timed``) or not:
        park ``record`` where its wait ends, or take it out of every line."""
        job_id = record.spec.id
        waits = record.phase == contract.JobPhase.QUEUED
        in_queue_line = self.queues.get(record.spec.queue)
        if waits and action.summary == QUEUE_FULL:
            self.queues[record.spec.queue].waiting(record)
        elif in_queue_line is not None and in_queue_line.admitted(job_id):
            self._wake_first(in_queue_line, 1)  # it no longer needs the slot: the next may take it
        if waits and action.summary == f"waiting:{placement.Fit.LATER}":
            self.nodes.waiting(record)
        else:
            self.nodes.admitted(job_id)
        if waits and action.summary == f"waiting:{placement.Fit.NEVER}":
            self.unplaceable.add(job_id)
        else:
            self.unplaceable.discard(job_id)
        if record.phase == contract.JobPhase.RUNNING and not timed:
            self.watched.add(job_id)
        else:
            self.watched.discard(job_id)

    def created(self, job_id: str) -> None:
        """The job's pod was created: it left the line, and the next in line may fit too."""
        self.nodes.admitted(job_id)
        self._wake_first(self.nodes, 1)

    def changed(self, before: contract.JobRecord | None, after: contract.JobRecord) -> None:
        """A record changed (our write or anyone's): a job that stopped running frees a node's
        room and a slot in its queue."""
        if before is None or before.phase != contract.JobPhase.RUNNING:
            return
        if after.phase == contract.JobPhase.RUNNING:
            return
        line = self.queues.get(after.spec.queue)
        if line is not None:
            self._wake_first(line, 1)
        self._wake_first(self.nodes, WAKE_ON_END)

    def room_freed(self, n: int) -> None:
        """The capacity watcher saw room free up on some node: the first ``n`` in line look."""
        self._wake_first(self.nodes, n)

    def nodes_changed(self, n: int) -> None:
        """Nodes joined, left, turned Ready or NotReady, or were resized: every job that fits no
        node looks again, and the first ``n`` of the line."""
        for job_id in list(self.unplaceable):
            self._wake(job_id)
        self._wake_first(self.nodes, n)

    def _wake_first(self, line: Admission, n: int) -> None:
        for job_id in line.best(n):
            self._wake(job_id)


class Sweep:
    """The resync's slow pass over parked jobs: a slice per tick, sized by how many are parked
    now, so that each parked job is looked at about once per ``ticks`` ticks and a tick costs the
    backlog divided by ``ticks``."""

    def __init__(self, *, ticks: float) -> None:
        self._ticks = max(1.0, ticks)
        self._left: list[str] = []

    def take(self, parked: Callable[[], Iterable[str]], *, count: int) -> list[str]:
        """This tick's slice of the ``count`` jobs parked now; a new sweep starts (``parked()``
        is read) when the last one ended."""
        if not self._left:
            self._left = list(parked())
        cut = len(self._left) - min(math.ceil(count / self._ticks), len(self._left))
        taken = self._left[cut:]
        del self._left[cut:]
        return taken
