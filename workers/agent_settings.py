"""The embedded node agent's settings (``jobq node-agent`` flags and its environment)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from broker import contract
from workers import fork_client, pod_env


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSettings:
    name: str
    capacity: contract.Resources
    interval_s: float = 1.0
    """Seconds between heartbeats."""
    grace_s: float = 2.0
    """Seconds between SIGTERM and SIGKILL when a pod is deleted."""
    work_dir: Path = Path(".jobq/nodes")
    """Pod logs go to <work_dir>/<node>/<pod>.log, pod homes to <work_dir>/<node>/home/<pod>."""
    nats_url: str = contract.DEFAULT_NATS_URL
    """Given to pods as JOBQ_NATS_URL (without user and password) when their spec has none."""
    python: str = sys.executable
    """Interpreter that runs built-in tasks (``python -m workers.runner``)."""
    fork_server: bool = dataclasses.field(default_factory=fork_client.enabled_from_env)
    """Fork task-runner pods from a pre-warmed fork server (JOBQ_FORK_SERVER, default on)."""
    pod_env_passthrough: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: pod_env.passthrough_from_env(os.environ)
    )
    """Agent variables pods also get (JOBQ_POD_ENV_PASSTHROUGH="A,B"); all others are scrubbed."""
    pod_user: pod_env.PodUser | None = dataclasses.field(
        default_factory=lambda: pod_env.user_from_env(os.environ)
    )
    """Run pods as this user (JOBQ_POD_USER=name or uid[:gid]); the agent must run as root."""

    def __post_init__(self) -> None:
        if self.pod_user is not None:
            self.pod_user.check_can_switch()

    @property
    def node_dir(self) -> Path:
        return self.work_dir / self.name
