"""Can a queued job be placed? A pure judgement over the nodes the backend reports.

Three answers:

* ``NOW``:   some Ready node has room for the job's requests now: create the attempt.
* ``LATER``: some Ready node could hold it, but none has room now (or a better-standing job waits
  for the room first): the job stays ``queued`` and is looked at again when capacity changes.
* ``NEVER``: no Ready node is big enough at all ("needs 200 CPU; largest Ready node offers 4"):
  the job stays ``queued`` with that reason and holds nobody back; it is looked at again when the
  set of nodes changes, and its ``pending_timeout_s`` (if any) sends it to the dead-letter queue.

A backend whose cluster keeps unplaceable pods Pending by itself (Kubernetes: the scheduler) only
gets ``NEVER`` from here; whether there is room *now* is the scheduler's call, and its
FailedScheduling message reaches the attempt's ``waiting_reason``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable

from broker import contract, fit
from broker.backends.base import NodeState


class Fit(enum.StrEnum):
    NOW = "now"
    LATER = "later"
    NEVER = "never"


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    fit: Fit
    reason: str = ""
    """Why the job cannot run now, in one line (empty for NOW)."""


NOW = Placement(Fit.NOW)


def _holds(room_cpu: float, room_memory: int, room_gpu: int, want: contract.Resources) -> bool:
    return fit.fits(want, cpu=room_cpu, memory_bytes=room_memory, gpu=room_gpu)


def judge(
    want: contract.Resources,
    nodes: Iterable[NodeState],
    *,
    avoid: Iterable[str] = (),
    cluster_waits: bool = False,
) -> Placement:
    """Where ``want`` stands on ``nodes`` (skipping ``avoid``); see the module docstring."""
    avoided = set(avoid)
    ready = [n for n in nodes if n.ready and n.name not in avoided]
    if not ready:
        why = "no Ready node" + (f" (avoiding {', '.join(sorted(avoided))})" if avoided else "")
        return Placement(Fit.NEVER, f"unschedulable: {why}")
    if not any(_holds(n.capacity.cpu, n.capacity.memory_bytes, n.capacity.gpu, want) for n in ready):
        return Placement(Fit.NEVER, f"unschedulable: {_shortfall(want, ready)}")
    if cluster_waits:
        return NOW
    if any(
        _holds(
            n.capacity.cpu - n.allocated_cpu,
            n.capacity.memory_bytes - n.allocated_memory,
            n.capacity.gpu,
            want,
        )
        for n in ready
    ):
        return NOW
    return Placement(
        Fit.LATER, f"waiting for capacity: needs {_describe(want)}; no Ready node has that free now"
    )


def _describe(want: contract.Resources) -> str:
    parts = [f"{want.cpu:g} CPU", want.memory]
    if want.gpu:
        parts.append(f"{want.gpu} GPU")
    return ", ".join(parts)


def _shortfall(want: contract.Resources, ready: list[NodeState]) -> str:
    """The first resource no Ready node has enough of, with the largest offer."""
    cpu = max(n.capacity.cpu for n in ready)
    if not fit.cpu_fits(want.cpu, cpu):
        return f"needs {want.cpu:g} CPU; largest Ready node offers {cpu:g}"
    memory = max(n.capacity.memory_bytes for n in ready)
    if memory < want.memory_bytes:
        return f"needs {want.memory} memory; largest Ready node offers {memory / 2**30:.1f}Gi"
    gpu = max(n.capacity.gpu for n in ready)
    if gpu < want.gpu:
        return f"needs {want.gpu} GPU; largest Ready node offers {gpu}"
    return f"needs {_describe(want)}; no single Ready node offers all of it"
