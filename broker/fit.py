"""Does a resource request fit in the room a node has left? One rule for the dispatcher's
placement, the local backend's choice of node and the node agent's admission.

A leaf module (it needs only the contract's ``Resources``), so the workers may import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker import contract

CPU_TOLERANCE = 1e-9
"""CPU requests are fractional and summed as floats: 0.1 + 0.2 must fit in 0.3 cores."""


def cpu_fits(want_cpu: float, room_cpu: float) -> bool:
    return room_cpu + CPU_TOLERANCE >= want_cpu


def fits(want: contract.Resources, *, cpu: float, memory_bytes: int, gpu: int) -> bool:
    """Whether ``want`` fits in ``cpu`` cores, ``memory_bytes`` bytes and ``gpu`` GPUs of room."""
    return cpu_fits(want.cpu, cpu) and memory_bytes >= want.memory_bytes and gpu >= want.gpu
