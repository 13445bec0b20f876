"""One pod on this node: what the kubelet keeps of it (process, log, exit), what its spec asks of
the container (env, memory limit), and the ``pods/status`` body it is reported with."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Any

from broker import contract
from broker.k8sapi import Obj
from workers import pod_runtime
from workers.kubelet.timestamps import _iso, _parse_iso, now_iso

LOST_MESSAGE = "The container could not be located when the pod was terminated"


@dataclasses.dataclass(slots=True)
class _Pod:
    namespace: str
    name: str
    uid: str
    job_id: str
    attempt: int
    image: str
    container: str
    limit_bytes: int | None
    pid: int
    """Leader of the pod's process group (pgid)."""
    start_ticks: int
    log_path: Path
    log_offset: int
    exit_file: Path
    started_at: dt.datetime
    message_policy: str = "File"
    process: subprocess.Popen[bytes] | None = None
    """None: adopted from an earlier incarnation of the agent (not our child; liveness is polled)."""
    exit_code: int | None = None
    finished_at: dt.datetime | None = None
    killed_for: str = ""
    message: str = ""
    deleting: bool = False
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    log_marks: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    """(wall time, log size) samples, once a second while the size changes: for ``sinceSeconds``."""

    @property
    def log_fields(self) -> dict[str, Any]:
        return {"pod": self.name, "job_id": self.job_id, "attempt": self.attempt}

    def record(self) -> pod_runtime.PodRecord:
        return pod_runtime.PodRecord(
            uid=self.uid, namespace=self.namespace, name=self.name, container=self.container,
            image=self.image, job_id=self.job_id, attempt=self.attempt, pid=self.pid,
            start_ticks=self.start_ticks, log=str(self.log_path), log_offset=self.log_offset,
            exit_file=str(self.exit_file), started_at=_iso(self.started_at) or "",
            limit_bytes=self.limit_bytes, message_policy=self.message_policy)

    @classmethod
    def from_record(cls, rec: pod_runtime.PodRecord) -> _Pod:
        return cls(namespace=rec.namespace, name=rec.name, uid=rec.uid, job_id=rec.job_id,
                   attempt=rec.attempt, image=rec.image, container=rec.container,
                   limit_bytes=rec.limit_bytes, pid=rec.pid, start_ticks=rec.start_ticks,
                   log_path=Path(rec.log), log_offset=rec.log_offset, exit_file=Path(rec.exit_file),
                   started_at=_parse_iso(rec.started_at) if rec.started_at else contract.utcnow(),
                   message_policy=rec.message_policy)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def offset_at(self, wall: float) -> int:
        """Bytes of the log written by ``wall`` (time.time()), from the samples; the pod's start if none."""
        found = self.log_offset
        for at, size in self.log_marks:
            if at > wall:
                break
            found = size
        return found

    def log_tail(self) -> bytes:
        """The end of this pod's log (never before its first byte), for FallbackToLogsOnError."""
        try:
            with self.log_path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(self.log_offset, size - contract.LOG_TAIL_BYTES))
                return handle.read()
        except OSError:
            return b""

    def container_status(self) -> Obj:
        state: Obj
        if self.finished_at is None:
            state = {"running": {"startedAt": _iso(self.started_at)}}
        else:
            reason = self.killed_for if self.killed_for in ("OOMKilled", "ContainerStatusUnknown") else (
                "Completed" if self.exit_code == 0 else "Error")
            state = {"terminated": {"exitCode": self.exit_code, "reason": reason,
                                    "startedAt": _iso(self.started_at), "finishedAt": _iso(self.finished_at),
                                    "containerID": f"jobq://{self.pid}"}}
            if self.message:
                state["terminated"]["message"] = self.message
        running = self.finished_at is None
        return {"name": self.container, "image": self.image, "imageID": "",
                "containerID": f"jobq://{self.pid}", "ready": running, "started": running,
                "restartCount": 0, "state": state}

    def status_body(self) -> Obj:
        """The ``pods/status`` patch for the pod's current state (computed now)."""
        if self.finished_at is None:
            phase = "Running"
        else:
            phase = "Succeeded" if self.exit_code == 0 and not self.killed_for else "Failed"
        ready = "True" if phase == "Running" else "False"
        reason = "" if phase == "Running" else "PodCompleted"
        conditions = [{"type": t, "status": s, "lastTransitionTime": now_iso(), "reason": reason}
                      for t, s in (("PodReadyToStartContainers", "True"), ("Initialized", "True"),
                                   ("Ready", ready), ("ContainersReady", ready))]
        return {"status": {"phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                           "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                           "startTime": _iso(self.started_at), "conditions": conditions,
                           "containerStatuses": [self.container_status()]}}


def terminated_status_body(obj: Obj, *, phase: str, terminated: Obj) -> Obj:
    """The ``pods/status`` patch for a pod without a process here (it failed to start, or was lost)."""
    container = obj["spec"]["containers"][0]
    return {"status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now_iso()}],
        "containerStatuses": [{"name": container["name"], "image": container.get("image", ""),
                               "imageID": "", "ready": False, "started": False, "restartCount": 0,
                               "state": {"terminated": terminated}}]}}


def _memory_limit(container: Obj) -> int | None:
    raw = (container.get("resources", {}).get("limits") or {}).get("memory")
    if raw is None:
        return None
    try:
        return contract.parse_memory(str(raw))
    except ValueError:
        return None


def _env(container: Obj, pod: Obj, node: str) -> dict[str, str]:
    env: dict[str, str] = {}
    fields = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
              "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": node, "status.podIP": "127.0.0.1",
              "status.hostIP": "127.0.0.1"}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif (ref := (var.get("valueFrom") or {}).get("fieldRef")) and ref.get("fieldPath") in fields:
            env[var["name"]] = fields[ref["fieldPath"]]
    return env
