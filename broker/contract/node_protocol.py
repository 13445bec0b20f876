"""Between the dispatcher and a node: the node's subjects, what to run (PodSpec), what runs
(PodStatus, NodeStatus), and the node's replies.

Subjects (``<node>`` is the node's name)::

    jobq.node.<node>.status             node agent heartbeat with its pods (core NATS)
    jobq.node.<node>.pods.create        request/reply: run a pod on that node
    jobq.node.<node>.pods.delete        request/reply: kill and forget a pod
    jobq.node.<node>.pods.log           request/reply: bytes of a pod's log (NodeLogRequest)
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from broker.contract.base import Model, utcnow
from broker.contract.resources import Resources
from broker.contract.states import PodPhase

NODE_STATUS_WILDCARD = "jobq.node.*.status"


def node_status_subject(node: str) -> str:
    return f"jobq.node.{node}.status"


def node_create_subject(node: str) -> str:
    return f"jobq.node.{node}.pods.create"


def node_delete_subject(node: str) -> str:
    return f"jobq.node.{node}.pods.delete"


def node_log_subject(node: str) -> str:
    return f"jobq.node.{node}.pods.log"


class PodSpec(Model):
    """What the dispatcher asks a cluster backend to run."""

    name: str
    job_id: str
    attempt: int
    queue: str
    command: tuple[str, ...]
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    resources: Resources = Resources()
    avoid_nodes: tuple[str, ...] = ()
    node: str | None = Field(default=None, description="Set by the placement step")
    epoch: int = 0
    """Leader epoch of the dispatcher asking (Kubernetes: annotation ``jobq.io/epoch``); the
    embedded node agent refuses creates and deletes from an epoch older than one it has seen."""


class PodStatus(Model):
    """A pod as a node reports it."""

    name: str
    job_id: str
    attempt: int
    phase: PodPhase
    node: str
    exit_code: int | None = None
    reason: str = ""
    """Kubernetes-style: OOMKilled, Error, Completed, Killed."""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    pid: int | None = None
    resources: Resources = Resources()
    log_tail: str = ""
    """Last lines of the pod's log once it failed (bounded by LOG_TAIL_BYTES / LOG_TAIL_LINES)."""
    uid: str = ""
    """Unique per pod the node ever started (the pod's ENV_POD_UID): tells two pods of one name apart."""


class NodeStatus(Model):
    """The node agent's heartbeat on ``jobq.node.<node>.status``."""

    name: str
    boot_id: str
    capacity: Resources
    pods: tuple[PodStatus, ...] = ()
    interval_s: float = 1.0
    pid: int | None = None
    at: dt.datetime = Field(default_factory=utcnow)


class NodeReply(Model):
    ok: bool
    error: str = ""


class NodeLogRequest(Model):
    """Request on ``jobq.node.<node>.pods.log``: bytes of one pod's log file from ``offset``."""

    pod: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=253)
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=64 * 1024, ge=1, le=512 * 1024)


class NodeLogReply(Model):
    """The node's answer: ``ok`` False (with ``error``) when it has no log for that pod. The log
    stays readable after the pod is deleted, for as long as the node keeps its work directory.
    ``data`` is URL-safe base64 in JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    ok: bool
    error: str = ""
    data: bytes = b""
    next_offset: int = 0
    running: bool = False
    """The pod is still running on this node: more output may come."""
