"""What one reconcile pass observed about a job: the input of decide() besides the record.

Everything here is read fresh on each pass (pods, node readiness, heartbeats, results), except
``create_outcome``: the backend's refusal of the previous pass's pod create, fed back so that the
decision about it is taken by decide() on the next pass, not inside the pass that met it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

from broker import contract
from broker.backends.base import PodState
from broker.dispatcher.placement import Placement


class CreateFailure(enum.StrEnum):
    UNSCHEDULABLE = "unschedulable"
    """No node could take the pod after all (no room, node refused): the attempt never ran."""
    UNCERTAIN = "uncertain"
    """The chosen node never answered: the pod may or may not run there."""
    REJECTED = "rejected"
    """The backend refused the pod itself (a dispatch error)."""


@dataclasses.dataclass(frozen=True, slots=True)
class CreateOutcome:
    """How the backend answered a create of an attempt's pod that did not succeed."""

    failure: CreateFailure
    attempt: int
    """The attempt whose pod it was: the outcome means nothing to any other attempt."""
    message: str
    """The backend's one-line explanation."""
    node: str | None = None
    """The node the pod was sent to (UNCERTAIN)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    pods: tuple[PodState, ...]
    last_heartbeat: dt.datetime | None = None
    """Latest heartbeat of the current attempt's worker, if any arrived."""
    result_exists: bool = False
    """Whether the current attempt's own pod stored a result (looked up once its pod succeeded or
    looks lost); a result under its key written by anyone else does not count."""
    result_writer: contract.Writer | None = None
    """Who wrote that result (recorded on the attempt when it succeeds the job)."""
    queue_full: bool = False
    """The job's queue is at its concurrency limit."""
    ready_nodes: frozenset[str] | None = None
    """Names of the Ready nodes (None: unknown), to relax anti-affinity that would block forever."""
    node_lost_why: str = ""
    """Why the current pod's node counts as lost (its ``node_ready`` is False), in one line."""
    listening_since: dt.datetime | None = None
    """When this dispatcher began receiving heartbeats: silence is not counted from before it."""
    suspect_nodes: frozenset[str] = frozenset()
    """Nodes jobq judged lost that the cluster may still call Ready: no new attempt goes there."""
    placement: Placement | None = None
    """For a queued job: whether a node can take it now (None: not judged, go ahead)."""
    create_outcome: CreateOutcome | None = None
    """The backend did not create the current attempt's pod on the last try (None: no such news)."""
