"""The on-disk record of a running control plane, so another process can inspect or stop it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devcluster.procs import ProcessRef

STATE_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ComponentState:
    """One running component."""

    name: str
    pid: int
    start_time: int
    log: str
    argv: list[str]

    @property
    def ref(self) -> ProcessRef:
        """The process, for liveness checks and signals."""
        return ProcessRef(self.pid, self.start_time)


@dataclass(frozen=True)
class ClusterState:
    """Everything needed to reach and stop a running control plane."""

    state_dir: str
    kubeconfig: str
    server: str
    k8s_version: str
    ports: dict[str, int]
    started_at: float
    startup_seconds: float
    components: list[ComponentState] = field(default_factory=list)
    ready: bool = False
    """False while ``start()`` is still in progress (or died half-way)."""
    format_version: int = FORMAT_VERSION

    def component(self, name: str) -> ComponentState:
        """The component called ``name``."""
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)

    def save(self) -> Path:
        """Write the state file atomically and return its path."""
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        """The state saved in ``state_dir``, or None if there is none."""
        path = state_dir / STATE_FILE
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable dev-cluster state file {path}: {exc}") from exc
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has an unknown format version {raw.get('format_version')!r}")
        comps = [ComponentState(**c) for c in raw.pop("components", [])]
        return cls(components=comps, **raw)

    @staticmethod
    def remove(state_dir: Path) -> None:
        """Delete the state file if present."""
        (state_dir / STATE_FILE).unlink(missing_ok=True)
