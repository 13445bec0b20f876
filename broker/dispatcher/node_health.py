"""Node health from the attempts' own heartbeats: the fastest node-loss signal jobq has.

Every task attempt publishes a heartbeat over NATS about once a second. The dispatcher stamps each
with *its own* receive time and files it under the node the attempt runs on. A node is

* ``ALIVE``   when one of its attempts beat within ``silence_s``: the machine runs and reaches NATS,
  whatever its kubelet or Lease says;
* ``SILENT``  when it has attempts that beat before, all of them have been silent for more than
  ``silence_s``, *and* attempts on other nodes beat after that silence began: the channel works,
  only this node went quiet, so the machine (or its network) is gone;
* ``UNKNOWN`` otherwise: no attempt there beats yet (command jobs, tasks still importing, a
  dispatcher that just started). The cluster backend's own signals (Lease, Ready) decide then.

Receive-time stamping makes a stalled dispatcher harmless: after a stall every node's heartbeats
arrive together and none looks silent. See docs/design/node-loss.md for how this combines with the
Lease and the Ready condition.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable

Clock = Callable[[], float]


class Evidence(enum.StrEnum):
    ALIVE = "alive"
    SILENT = "silent"
    UNKNOWN = "unknown"


@dataclasses.dataclass(slots=True)
class NodeHeartbeats:
    """Latest heartbeat receive time (monotonic) of each beating attempt, grouped by node."""

    silence_s: float
    clock: Clock = time.monotonic
    suspect_s: float = 60.0
    """How long a node that fell silent stays a place no new attempt goes, unless one of its
    attempts beats again: longer than a Lease (40 s) takes to expire, so the backend has its own
    verdict by then. Without it, a dead node the API still calls Ready would receive the very
    replacements of the attempts it just lost."""
    _by_node: dict[str, dict[tuple[str, int], float]] = dataclasses.field(default_factory=dict)
    _node_of: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)
    _silent: set[str] = dataclasses.field(default_factory=set)
    _suspect_until: dict[str, float] = dataclasses.field(default_factory=dict)
    _back_at: dict[str, float] = dataclasses.field(default_factory=dict)
    """Node -> when the backend last saw it come back (``vouched``)."""

    def record(self, node: str, job_id: str, attempt: int) -> None:
        key = (job_id, attempt)
        previous = self._node_of.get(key)
        if previous is not None and previous != node:
            self._by_node.get(previous, {}).pop(key, None)
        self._node_of[key] = node
        self._by_node.setdefault(node, {})[key] = self.clock()
        self._suspect_until.pop(node, None)

    def forget(self, job_id: str, attempt: int | None = None) -> None:
        """Stop tracking an attempt that ended (every attempt of the job when ``attempt`` is None)."""
        keys = [k for k in self._node_of if k[0] == job_id and (attempt is None or k[1] == attempt)]
        for key in keys:
            node = self._node_of.pop(key)
            beats = self._by_node.get(node)
            if beats is not None:
                beats.pop(key, None)
                if not beats:
                    del self._by_node[node]

    def _newest(self, node: str) -> float | None:
        beats = self._by_node.get(node)
        return max(beats.values()) if beats else None

    def evidence(self, node: str | None) -> Evidence:
        if node is None:
            return Evidence.UNKNOWN
        newest = self._newest(node)
        if newest is None:
            return Evidence.UNKNOWN
        now = self.clock()
        if now - newest <= self.silence_s:
            return Evidence.ALIVE
        others = [t for n, beats in self._by_node.items() if n != node for t in beats.values()]
        if others and max(others) > newest + self.silence_s:
            if self._back_at.get(node, float("-inf")) <= newest:  # not restarted since: avoid it
                self._suspect_until[node] = now + self.suspect_s
            return Evidence.SILENT
        return Evidence.UNKNOWN

    def vouched(self, node: str) -> None:
        """The backend saw ``node`` come back (NotReady, then Ready: its agent or kubelet was
        restarted): it is no suspect any more. Without this a restarted node would get no new
        attempt, so none of its attempts could beat, until ``suspect_s`` ran out. Its silence
        is older than its return, so it does not make it a suspect again either."""
        self._suspect_until.pop(node, None)
        self._back_at[node] = self.clock()

    def suspects(self) -> frozenset[str]:
        """Nodes that fell silent within ``suspect_s`` and have not beaten since: new attempts
        avoid them (their attempts, once failed, are forgotten, so SILENT alone would not last)."""
        now = self.clock()
        for node in [n for n, until in self._suspect_until.items() if until <= now]:
            del self._suspect_until[node]
        return frozenset(self._suspect_until)

    def silent_for(self, node: str) -> float:
        newest = self._newest(node)
        return 0.0 if newest is None else self.clock() - newest

    def attempts_on(self, node: str) -> list[tuple[str, int]]:
        return list(self._by_node.get(node, {}))

    def newly_silent(self) -> list[str]:
        """Nodes that turned SILENT since the last call (a periodic check wakes their jobs)."""
        silent = {n for n in self._by_node if self.evidence(n) == Evidence.SILENT}
        fresh = sorted(silent - self._silent)
        self._silent = silent
        return fresh

    def prune(self, older_than_s: float) -> None:
        """Drop attempts not heard from for a long time (their ends were missed)."""
        cutoff = self.clock() - older_than_s
        for key in [k for k, n in self._node_of.items() if self._by_node[n][k] < cutoff]:
            self.forget(*key)


def node_lost(
    *,
    node: str | None,
    backend_ready: bool,
    backend_why: str,
    evidence: Evidence,
    beating: bool,
    task: bool,
    silent_for: float,
) -> str | None:
    """Why a pod's node counts as lost, or None while it does not. Pure; the table of cases is in
    docs/design/node-loss.md.

    ``backend_ready``/``backend_why``: the cluster backend's verdict (a Lease past its own
    duration, a Ready condition that is not True, a deleted Node). ``beating``: the pod's own
    attempt beat within the silence window. ``task``: the pod runs jobq's runner (it beats);
    command pods never do, so only the backend can judge them.
    """
    if node is None or beating:
        return None  # an attempt that still speaks is never killed for its node
    if task and evidence is Evidence.SILENT:
        return (f"node {node}: every attempt there stopped heartbeating {silent_for:.1f}s ago "
                "while attempts on other nodes kept beating")
    if not backend_ready and evidence is not Evidence.ALIVE:
        return backend_why or f"node {node} is not ready"
    return None
