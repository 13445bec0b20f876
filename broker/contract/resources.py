"""Resource requests (Kubernetes-style quantities) and the named profiles."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from broker.contract.base import Model

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_memory(quantity: str) -> int:
    """Bytes in a Kubernetes-style memory quantity such as ``512Mi`` or ``4Gi``."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"memory {quantity!r} is not a quantity like 512Mi or 4Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class Resources(Model):
    cpu: float = Field(default=0.5, gt=0, le=256, description="CPU cores requested")
    memory: str = Field(default="512Mi", description="Memory requested, e.g. 512Mi or 4Gi")
    gpu: int = Field(default=0, ge=0, le=16, description="GPUs requested")

    @field_validator("memory")
    @classmethod
    def _memory_is_quantity(cls, value: str) -> str:
        parse_memory(value)
        return value

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)


PROFILES: dict[str, Resources] = {
    "small": Resources(cpu=0.5, memory="512Mi"),
    "medium": Resources(cpu=1, memory="2Gi"),
    "large": Resources(cpu=4, memory="16Gi"),
    "gpu": Resources(cpu=4, memory="16Gi", gpu=1),
}
"""Named resource profiles: ``small`` fits scikit-learn work, ``large``/``gpu`` deep learning."""
