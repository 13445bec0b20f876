"""LocalBackend: pods run as processes on node agents that talk to us over NATS.

Each node agent (``jobq node-agent``) publishes a NodeStatus with all its pods every
``interval_s`` and at every change. This backend keeps the last status of every node, marks a
node NotReady once it has been silent for ``node_timeout_s``, places pods on Ready nodes that fit
(least loaded first, never on a node the job asked to avoid) and asks that node to run them.
Pods on a NotReady node are still listed, with ``node_ready=False``, so the dispatcher can see
what was lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Self

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from broker import contract, fit
from broker.backends import base
from broker.backends.listening_clock import ListeningClock

log = structlog.get_logger("jobq.backend.local")


@dataclasses.dataclass(slots=True)
class _Node:
    status: contract.NodeStatus
    seen: float
    """``ListeningClock`` time of the last status."""
    ready: bool = True
    not_ready_since: dt.datetime | None = None
    placed: dict[str, contract.PodSpec] = dataclasses.field(default_factory=dict)
    placed_at: dict[str, float] = dataclasses.field(default_factory=dict)
    """Pods we asked this node to run that its status does not show yet."""
    forgotten: set[str] = dataclasses.field(default_factory=set)
    """Pods deleted while the node was unreachable; hidden until the node reports them again."""


def _is_active(pod: contract.PodStatus) -> bool:
    return pod.phase in (contract.PodPhase.PENDING, contract.PodPhase.RUNNING)


class LocalBackend:
    name = "local"
    cluster_waits = False

    def __init__(self, nc: NATS, *, node_timeout_s: float = 3.0, request_timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._node_timeout_s = node_timeout_s
        self._request_timeout_s = request_timeout_s
        self._nodes: dict[str, _Node] = {}
        self._wakeups: asyncio.Queue[str] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._started = 0.0
        self._place_lock = asyncio.Lock()
        self._tick_s = min(0.25, node_timeout_s / 4)
        self._listening = ListeningClock(expected_gap_s=2 * self._tick_s)
        """Silence is judged over time this process was listening: a dispatcher that was paused
        must not take the statuses still queued in its socket for dead nodes."""

    async def __aenter__(self) -> Self:
        self._started = time.monotonic()
        self._sub = await self._nc.subscribe(contract.NODE_STATUS_WILDCARD, cb=self._on_status)
        self._monitor = asyncio.create_task(self._watch_liveness(), name="local-backend-liveness")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        if self._sub is not None and not self._nc.is_closed:
            await self._sub.unsubscribe()

    async def wait_synced(self) -> None:
        remaining = self._started + self._node_timeout_s - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)

    # --- observing nodes ------------------------------------------------------------------

    async def _on_status(self, msg: Msg) -> None:
        try:
            status = contract.NodeStatus.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("node_status_invalid", subject=msg.subject, error=str(exc))
            return
        node = self._nodes.get(status.name)
        if node is None:
            node = self._nodes[status.name] = _Node(status=status, seen=self._listening.tick())
            log.info("node_joined", node=status.name, boot_id=status.boot_id)
            self._wake_pods(status.pods)
        else:
            previous = {p.name: p for p in node.status.pods}
            changed = [p for p in status.pods if previous.get(p.name) != p]
            gone = [p for name, p in previous.items() if name not in {q.name for q in status.pods}]
            if status.boot_id != node.status.boot_id:
                log.info("node_rebooted", node=status.name, boot_id=status.boot_id)
            node.status, node.seen = status, self._listening.tick()
            self._wake_pods([*changed, *gone])
            if not node.ready:
                node.ready, node.not_ready_since = True, None
                node.forgotten.clear()  # reachable again: pods we gave up on can be deleted now
                log.info("node_ready", node=status.name)
                self._wake_pods(status.pods)
        reported = {p.name for p in status.pods}
        expired = time.monotonic() - self._request_timeout_s - 5 * status.interval_s
        for name in list(node.placed):
            if name in reported or node.placed_at.get(name, 0.0) < expired:
                # Reported: the node runs it. Not reported long after we asked: the create never
                # landed (lost in a NATS failover); forget it so the dispatcher asks again.
                if name not in reported:
                    log.warning(
                        "placement_expired", pod=name, node=status.name, job_id=node.placed[name].job_id
                    )
                    self._wakeups.put_nowait(node.placed[name].job_id)
                del node.placed[name]
                node.placed_at.pop(name, None)
        node.forgotten &= reported

    def _wake_pods(self, pods: list[contract.PodStatus] | tuple[contract.PodStatus, ...]) -> None:
        for pod in pods:
            self._wakeups.put_nowait(pod.job_id)

    async def _watch_liveness(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            now = self._listening.tick()
            for node in self._nodes.values():
                if node.ready and now - node.seen > self._node_timeout_s:
                    node.ready, node.not_ready_since = False, contract.utcnow()
                    log.warning(
                        "node_not_ready",
                        node=node.status.name,
                        silent_s=round(now - node.seen, 2),
                        reason="heartbeat_missed",
                    )
                    self._wake_pods(node.status.pods)
                    for spec in node.placed.values():
                        self._wakeups.put_nowait(spec.job_id)

    async def watch(self) -> AsyncIterator[str]:
        while True:
            yield await self._wakeups.get()

    # --- reading ---------------------------------------------------------------------------

    async def list_pods(self, *, job_id: str | None = None) -> list[base.PodState]:
        pods: list[base.PodState] = []
        for node in self._nodes.values():
            for p in node.status.pods:
                if (job_id is None or p.job_id == job_id) and p.name not in node.forgotten:
                    pods.append(
                        base.PodState(
                            name=p.name,
                            job_id=p.job_id,
                            attempt=p.attempt,
                            phase=p.phase,
                            node=node.status.name,
                            node_ready=node.ready,
                            node_why=self._not_ready_reason(node),
                            exit_code=p.exit_code,
                            reason=p.reason,
                            message=p.log_tail,
                            started_at=p.started_at,
                            finished_at=p.finished_at,
                            uid=p.uid,
                        )
                    )
            for spec in node.placed.values():
                if job_id is None or spec.job_id == job_id:
                    pods.append(
                        base.PodState(
                            name=spec.name,
                            job_id=spec.job_id,
                            attempt=spec.attempt,
                            phase=contract.PodPhase.PENDING,
                            node=node.status.name,
                            node_ready=node.ready,
                            node_why=self._not_ready_reason(node),
                        )
                    )
        return pods

    async def list_nodes(self) -> list[base.NodeState]:
        return [self._node_state(node) for node in sorted(self._nodes.values(), key=lambda n: n.status.name)]

    def _node_state(self, node: _Node) -> base.NodeState:
        cpu, memory = self._allocated(node)
        return base.NodeState(
            name=node.status.name,
            ready=node.ready,
            capacity=node.status.capacity,
            allocated_cpu=cpu,
            allocated_memory=memory,
            pods=sum(1 for p in node.status.pods if _is_active(p)) + len(node.placed),
            last_heartbeat=node.status.at,
            not_ready_since=node.not_ready_since,
            not_ready_reason=self._not_ready_reason(node),
        )

    def _not_ready_reason(self, node: _Node) -> str:
        if node.ready:
            return ""
        return f"node {node.status.name}: no status for more than {self._node_timeout_s:g}s"

    @staticmethod
    def _allocated(node: _Node) -> tuple[float, int]:
        cpu, memory = 0.0, 0
        requests = [spec.resources for spec in node.placed.values()]
        requests += [pod.resources for pod in node.status.pods if _is_active(pod)]
        for r in requests:
            cpu += r.cpu
            memory += r.memory_bytes
        return cpu, memory

    # --- acting ----------------------------------------------------------------------------

    def _choose_node(self, spec: contract.PodSpec) -> _Node:
        candidates: list[tuple[float, str, _Node]] = []
        for node in self._nodes.values():
            if not node.ready or node.status.name in spec.avoid_nodes:
                continue
            cpu, memory = self._allocated(node)
            cap = node.status.capacity
            if not fit.fits(spec.resources, cpu=cap.cpu - cpu, memory_bytes=cap.memory_bytes - memory,
                            gpu=cap.gpu):
                continue
            candidates.append(((cpu + spec.resources.cpu) / cap.cpu, node.status.name, node))
        if not candidates:
            ready = [n.status.name for n in self._nodes.values() if n.ready]
            raise base.Unschedulable(
                f"no Ready node fits cpu={spec.resources.cpu} memory={spec.resources.memory} "
                f"gpu={spec.resources.gpu} (ready: {ready or 'none'}, avoiding: {list(spec.avoid_nodes)})"
            )
        return min(candidates, key=lambda c: (c[0], c[1]))[2]

    def _find(self, name: str) -> list[_Node]:
        return [
            n for n in self._nodes.values() if name in n.placed or any(p.name == name for p in n.status.pods)
        ]

    async def create_pod(self, spec: contract.PodSpec) -> None:
        async with self._place_lock:
            if any(n.ready for n in self._find(spec.name)):
                return
            node = self._choose_node(spec)
            placed = spec.model_copy(update={"node": node.status.name})
            node.placed[spec.name] = placed
            node.placed_at[spec.name] = time.monotonic()
        try:
            reply = await self._nc.request(
                contract.node_create_subject(node.status.name),
                placed.model_dump_json().encode(),
                timeout=self._request_timeout_s,
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError) as exc:
            raise base.PlacementUncertain(
                f"node {node.status.name} did not answer the create request for {spec.name}",
                node=node.status.name,
            ) from exc
        except nats.errors.Error as exc:
            node.placed.pop(spec.name, None)
            raise base.BackendUnavailable(f"NATS request failed: {exc}") from exc
        answer = contract.NodeReply.model_validate_json(reply.data)
        if not answer.ok:
            node.placed.pop(spec.name, None)
            raise base.Unschedulable(f"node {node.status.name} refused {spec.name}: {answer.error}")
        log.info(
            "pod_created", pod=spec.name, node=node.status.name, job_id=spec.job_id, attempt=spec.attempt
        )

    async def delete_pod(self, name: str, *, force: bool = False, epoch: int = 0) -> None:
        for node in self._find(name):
            node.placed.pop(name, None)
            if not node.ready or force:
                node.forgotten.add(name)
                continue
            try:
                reply = await self._nc.request(
                    contract.node_delete_subject(node.status.name),
                    name.encode(),
                    timeout=self._request_timeout_s,
                    headers={contract.HEADER_EPOCH: str(epoch)},
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
                node.forgotten.add(name)
                continue
            except nats.errors.Error as exc:
                raise base.BackendUnavailable(f"NATS request failed: {exc}") from exc
            answer = contract.NodeReply.model_validate_json(reply.data)
            if answer.ok:
                node.status = node.status.model_copy(
                    update={"pods": tuple(p for p in node.status.pods if p.name != name)}
                )
            else:  # e.g. a newer leader's epoch reached the node first
                log.warning("pod_delete_refused", pod=name, node=node.status.name, epoch=epoch,
                            error=answer.error)

    async def read_log(self, name: str, *, node: str | None, offset: int = 0,
                       limit: int = 64 * 1024) -> base.LogRead:
        """Ask the node that ran the pod; its log outlives the pod, but not the node."""
        if node is None:
            raise base.LogUnavailable(f"pod {name} was never placed on a node")
        try:
            request = contract.NodeLogRequest(pod=name, offset=offset, limit=min(limit, 512 * 1024))
        except ValidationError as exc:
            raise base.LogUnavailable(f"{name!r} is not a pod name") from exc
        try:
            reply = await self._nc.request(contract.node_log_subject(node),
                                           request.model_dump_json().encode(),
                                           timeout=self._request_timeout_s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError) as exc:
            raise base.LogUnavailable(f"node {node} does not answer (the log of {name} is on it)") from exc
        except nats.errors.Error as exc:
            raise base.BackendUnavailable(f"NATS request failed: {exc}") from exc
        try:
            answer = contract.NodeLogReply.model_validate_json(reply.data)
        except ValidationError as exc:
            raise base.BackendError(f"node {node} sent an invalid log reply: {exc}") from exc
        if not answer.ok:
            raise base.LogUnavailable(answer.error or f"node {node} has no log of {name}")
        return base.LogRead(data=answer.data, next_offset=answer.next_offset, running=answer.running)
