"""FakeBackend: a tiny in-memory ClusterBackend for unit tests. Nothing runs; tests drive pods.

Pods are placed on the first Ready node (not in ``avoid_nodes``) that has a free slot; tests move
them along with ``set_phase`` and kill nodes with ``kill_node``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Self

from broker import contract
from broker.backends import base


class FakeBackend:
    name = "fake"
    cluster_waits = False

    def __init__(self, nodes: tuple[str, ...] = ("fake-1", "fake-2", "fake-3"), *, slots: int = 8,
                 capacity: contract.Resources | None = None) -> None:
        self.ready = dict.fromkeys(nodes, True)
        self.slots = slots
        self.capacity = capacity or contract.Resources(cpu=4, memory="8Gi")
        self.pods: dict[str, base.PodState] = {}
        self.specs: dict[str, contract.PodSpec] = {}
        self.created: list[str] = []
        """Every successful create call, including idempotent repeats (for assertions)."""
        self.logs: dict[str, bytes] = {}
        """Pod name -> its output; tests write it. Kept after the pod is deleted."""
        self._wakeups: asyncio.Queue[str] = asyncio.Queue()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def wait_synced(self) -> None:
        return None

    async def create_pod(self, spec: contract.PodSpec) -> None:
        self.created.append(spec.name)
        if spec.name in self.pods:
            return
        busy = {n: sum(1 for p in self.pods.values() if p.node == n and not p.is_finished)
                for n in self.ready}
        free = [n for n, ok in self.ready.items()
                if ok and n not in spec.avoid_nodes and busy[n] < self.slots]
        if not free:
            raise base.Unschedulable(f"no Ready node with a free slot for {spec.name}")
        self.specs[spec.name] = spec
        self.pods[spec.name] = base.PodState(name=spec.name, job_id=spec.job_id, attempt=spec.attempt,
                                             phase=contract.PodPhase.PENDING, node=free[0], node_ready=True,
                                             uid=str(uuid.uuid4()))
        self._wakeups.put_nowait(spec.job_id)

    async def delete_pod(self, name: str, *, force: bool = False, epoch: int = 0) -> None:
        pod = self.pods.pop(name, None)
        self.specs.pop(name, None)
        if pod is not None:
            self._wakeups.put_nowait(pod.job_id)

    async def read_log(self, name: str, *, node: str | None, offset: int = 0,
                       limit: int = 64 * 1024) -> base.LogRead:
        if name not in self.logs:
            raise base.LogUnavailable(f"no log of {name}")
        data = self.logs[name][offset:offset + limit]
        pod = self.pods.get(name)
        return base.LogRead(data=data, next_offset=offset + len(data),
                            running=pod is not None and not pod.is_finished)

    async def list_pods(self, *, job_id: str | None = None) -> list[base.PodState]:
        return [dataclasses.replace(p, node_ready=self.ready.get(p.node or "", False))
                for p in self.pods.values() if job_id is None or p.job_id == job_id]

    async def list_nodes(self) -> list[base.NodeState]:
        return [base.NodeState(name=n, ready=ok, capacity=self.capacity, allocated_cpu=0.0,
                               allocated_memory=0,
                               pods=sum(1 for p in self.pods.values() if p.node == n and not p.is_finished),
                               last_heartbeat=None) for n, ok in sorted(self.ready.items())]

    async def watch(self) -> AsyncIterator[str]:
        while True:
            yield await self._wakeups.get()

    # --- test controls -----------------------------------------------------------------------

    def set_phase(self, name: str, phase: contract.PodPhase, *, exit_code: int | None = None,
                  reason: str = "") -> None:
        pod = self.pods[name]
        now = contract.utcnow()
        self.pods[name] = dataclasses.replace(
            pod, phase=phase, exit_code=exit_code, reason=reason, started_at=pod.started_at or now,
            finished_at=now if phase in (contract.PodPhase.SUCCEEDED, contract.PodPhase.FAILED) else None)
        self._wakeups.put_nowait(pod.job_id)

    def kill_node(self, node: str) -> None:
        self.ready[node] = False
        for pod in self.pods.values():
            if pod.node == node:
                self._wakeups.put_nowait(pod.job_id)
