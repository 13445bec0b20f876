"""Recovery time: from losing a node (or disrupting it) to the lost attempts' replacements running.

One definition, measured from two starting points:

* the metrics and the API measure from the lost node's last heartbeat (:func:`lost_at`), per node
  failure the dispatcher saw (:class:`NodeFailure`, :func:`failure_report`);
* the demo and the chaos probes know when they killed or cut off a node, and measure from then
  (:func:`after_disruption`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from collections.abc import Callable, Iterable, Mapping

from pydantic import BaseModel

from broker import contract
from broker.readmodel.times import OptionalTime


def seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    """``end - start`` in seconds, at least 0; None when either is unknown."""
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def replacement(record: contract.JobRecord, index: int) -> contract.Attempt | None:
    """The attempt that followed ``record.attempts[index]``, if any."""
    return record.attempts[index + 1] if index + 1 < len(record.attempts) else None


@dataclasses.dataclass(frozen=True, slots=True)
class NodeFailure:
    """A node this dispatcher saw go from Ready to NotReady."""

    node: str
    detected_at: dt.datetime
    """When the backend marked it NotReady."""
    last_heartbeat: dt.datetime | None
    """The last time the node was heard from: the start of recovery time."""


def lost_at(
    attempt: contract.Attempt,
    *,
    failures: Iterable[NodeFailure],
    heartbeats: Mapping[str, dt.datetime | None],
) -> dt.datetime | None:
    """When the node of an attempt lost with node_lost was last heard from: the newest failure of
    its node detected by the attempt's end (``failures`` oldest first), else the node's last
    heartbeat as now known (``heartbeats``), never later than the attempt's end."""
    heartbeat = None
    for failure in reversed(list(failures)):
        if failure.node == attempt.node and (
            attempt.finished_at is None or failure.detected_at <= attempt.finished_at
        ):
            heartbeat = failure.last_heartbeat
            break
    if heartbeat is None and attempt.node is not None and attempt.node in heartbeats:
        heartbeat = heartbeats[attempt.node]
    if heartbeat is not None and attempt.finished_at is not None:
        return min(heartbeat, attempt.finished_at)
    return heartbeat or attempt.finished_at


def after_node_lost(
    record: contract.JobRecord,
    attempt: contract.Attempt,
    *,
    lost_at: Callable[[contract.Attempt], dt.datetime | None],
) -> float | None:
    """For an attempt that just started: the recovery time it ends, when the attempt before it
    was lost with its node (node_lost); else None."""
    if attempt.number == 1:
        return None
    lost = record.attempts[attempt.number - 2]
    if lost.reason != contract.FailureReason.NODE_LOST:
        return None
    return seconds(lost_at(lost), attempt.started_at)


def after_disruption(
    records: Iterable[contract.JobRecord], *, node: str, killed_at: dt.datetime
) -> list[float]:
    """Per job that lost an attempt on ``node`` to a disruption (``node_lost``, or ``deleted``,
    ``heartbeat_lost``, ``evicted``: however the loss was noticed first, e.g. a node restarted
    before its timeout reports its pods gone): from the kill to its replacement running."""
    found = []
    for record in records:
        for i, attempt in enumerate(record.attempts):
            if attempt.node == node and attempt.reason is not None and attempt.reason.is_disruption:
                following = replacement(record, i)
                if following is not None and following.started_at is not None:
                    found.append((following.started_at - killed_at).total_seconds())
                break
    return found


class JobRecovery(BaseModel):
    id: str
    recovery_seconds: float | None


class RecoveryStats(BaseModel):
    max: float | None
    p50: float | None


class FailureReport(BaseModel):
    """One node failure: the jobs it cost an attempt and their recovery times."""

    node: str
    detected_at: OptionalTime
    last_heartbeat: OptionalTime
    affected_jobs: int
    recovered_jobs: int
    recovery_seconds: RecoveryStats
    jobs: list[JobRecovery]
    """At most 50 of them."""


def failure_report(
    failures: Iterable[NodeFailure],
    records: Iterable[contract.JobRecord],
    *,
    lost_at: Callable[[contract.Attempt], dt.datetime | None],
) -> list[FailureReport]:
    """Per node failure (newest first): the jobs it cost an attempt and their recovery times."""
    ordered = sorted(failures, key=lambda f: f.detected_at)
    records = list(records)
    report: list[FailureReport] = []
    for i, failure in enumerate(ordered):
        until = next((f.detected_at for f in ordered[i + 1 :] if f.node == failure.node), None)
        # An attempt lost with this failure ended after the node's last heartbeat: it may end well
        # before the failure is detected (a create that ended uncertain as the node died).
        since = (failure.last_heartbeat or failure.detected_at) - dt.timedelta(seconds=1)
        jobs: list[JobRecovery] = []
        for record in records:
            for n, attempt in enumerate(record.attempts):
                if (
                    attempt.node != failure.node
                    or attempt.reason != contract.FailureReason.NODE_LOST
                    or attempt.finished_at is None
                    or attempt.finished_at < since
                    or (until is not None and attempt.finished_at >= until)
                ):
                    continue
                following = replacement(record, n)
                recovered = seconds(lost_at(attempt), following.started_at if following else None)
                jobs.append(JobRecovery(id=record.spec.id, recovery_seconds=recovered))
        times = [j.recovery_seconds for j in jobs if j.recovery_seconds is not None]
        report.append(
            FailureReport(
                node=failure.node,
                detected_at=failure.detected_at,
                last_heartbeat=failure.last_heartbeat,
                affected_jobs=len(jobs),
                recovered_jobs=len(times),
                recovery_seconds=RecoveryStats(
                    max=round(max(times), 3) if times else None,
                    p50=round(statistics.median(times), 3) if times else None,
                ),
                jobs=jobs[:50],
            )
        )
    return report[::-1]
