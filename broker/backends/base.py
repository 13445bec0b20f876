"""The cluster backend protocol and the types that cross it.

Error tree (every backend raises only these, chaining the client's exception)::

    BackendError                 the backend failed; the dispatcher retries with backoff
    ├── BackendUnavailable       the backend could not be reached (API server or NATS down)
    ├── Unschedulable            no Ready node fits the pod now; wait for capacity
    ├── PlacementUncertain       the chosen node never answered: the pod may or may not run there
    └── PodRejected              the backend will never run this pod (invalid spec)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Protocol, Self

from broker import contract


class BackendError(Exception):
    """A cluster backend operation failed."""


class BackendUnavailable(BackendError):
    """The backend could not be reached."""


class Unschedulable(BackendError):
    """No Ready node can take the pod right now."""


class PlacementUncertain(BackendError):
    """A node was asked to run the pod and did not answer."""

    def __init__(self, message: str, *, node: str) -> None:
        super().__init__(message)
        self.node = node


class PodRejected(BackendError):
    """The backend refuses this pod for good."""


class LogUnavailable(BackendError):
    """The pod's log cannot be read (the pod and its node's copy are gone)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LogRead:
    data: bytes
    """Bytes of the log from the requested offset (at most the requested limit)."""
    next_offset: int
    running: bool
    """The container may still write more."""


@dataclasses.dataclass(frozen=True, slots=True)
class PodState:
    """One pod as the backend observes it."""

    name: str
    job_id: str
    attempt: int
    phase: contract.PodPhase
    node: str | None
    node_ready: bool
    """False once the pod's node is NotReady, unreachable or gone."""
    node_why: str = ""
    """Why ``node_ready`` is False, in one line (e.g. "Lease not renewed for 41s")."""
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    """A finished pod: its termination message (the kubelet fills it with the log's last lines on
    error). A pending pod: why it is not running yet (the scheduler's FailedScheduling message)."""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    terminating: bool = False
    """Deletion was requested and waits for the pod's node to confirm (Kubernetes:
    ``deletionTimestamp`` set)."""
    uid: str = ""
    """Unique per pod ever created (Kubernetes: ``metadata.uid``; embedded: the node agent's),
    "" when the backend does not know it yet. The worker stamps its outputs with it
    (contract.ENV_POD_UID), so the dispatcher can tell this pod's result from another's."""

    @property
    def is_finished(self) -> bool:
        return self.phase in (contract.PodPhase.SUCCEEDED, contract.PodPhase.FAILED)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    ready: bool
    capacity: contract.Resources
    allocated_cpu: float
    allocated_memory: int
    pods: int
    last_heartbeat: dt.datetime | None
    not_ready_since: dt.datetime | None = None
    not_ready_reason: str = ""


class ClusterBackend(Protocol):
    name: str
    cluster_waits: bool
    """True when the cluster keeps a pod that has no room *now* Pending and places it later by
    itself (Kubernetes' scheduler); jobq then only holds back jobs that fit no node at all."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def wait_synced(self) -> None:
        """Return once list_pods reflects the cluster (after a restart, all nodes reported)."""

    async def create_pod(self, spec: contract.PodSpec) -> None:
        """Run the pod; creating a pod that exists already succeeds. ``spec.epoch`` is the asking
        leader's epoch (embedded nodes refuse one older than they have seen)."""

    async def delete_pod(self, name: str, *, force: bool = False, epoch: int = 0) -> None:
        """Kill and forget the pod; deleting a missing pod succeeds. ``force``: the dispatcher
        judged the pod's node lost, so do not wait for its node to confirm (Kubernetes: grace 0).
        ``epoch``: the asking leader's epoch, as for ``create_pod``."""

    async def read_log(self, name: str, *, node: str | None, offset: int = 0,
                       limit: int = 64 * 1024) -> LogRead:
        """The pod's output from byte ``offset``; raises LogUnavailable when it is gone."""

    async def list_pods(self, *, job_id: str | None = None) -> list[PodState]: ...

    async def list_nodes(self) -> list[NodeState]: ...

    def watch(self) -> AsyncIterator[str]:
        """Yield job ids whose pods or nodes changed: wake-ups only, no state."""
