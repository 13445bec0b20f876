"""The Node: registration, status computation and reporting, and the Lease (the heartbeat)."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from kubernetes_asyncio import client as k8s

from broker.k8sapi import ApiError, Obj, call
from workers.kubelet.settings import KubeletSettings
from workers.kubelet.timestamps import now_iso

log = structlog.get_logger("jobq.kubelet")

CONDITION_TYPES = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {"m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
           "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10,
           "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50,
           "Ei": Decimal(2) ** 60}


def quantity_value(raw: object) -> Decimal | str:
    """The value of a Kubernetes quantity (the API server rewrites ``4000m`` as ``4``)."""
    match = _QUANTITY.match(str(raw).strip())
    if not match:
        return str(raw)
    try:
        return Decimal(match.group(1)) * _SUFFIX.get(match.group(2) or "", Decimal(1))
    except InvalidOperation:
        return str(raw)


def _quantity_cpu(cpu: float) -> str:
    millis = round(cpu * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _status_view(status: Obj, info_keys: Iterable[str]) -> Obj:
    """What decides whether the node status changed: heartbeat times and quantity spelling ignored."""
    def resources(raw: Obj | None) -> dict[str, Decimal | str]:
        return {k: quantity_value(v) for k, v in (raw or {}).items()}

    fields = ("status", "reason", "message", "lastTransitionTime")
    conditions = {c.get("type"): tuple(c.get(k) for k in fields)
                  for c in status.get("conditions") or [] if c.get("type") in CONDITION_TYPES}
    endpoint = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port", 0)
    return {"capacity": resources(status.get("capacity")),
            "allocatable": resources(status.get("allocatable")), "conditions": conditions,
            "addresses": [(a.get("type"), a.get("address")) for a in status.get("addresses") or []],
            "port": endpoint, "nodeInfo": {k: (status.get("nodeInfo") or {}).get(k) for k in info_keys}}


class NodeReporter:
    """Registers the Node, reports its status when it changed (or is due), renews its Lease."""

    def __init__(self, api: k8s.ApiClient, settings: KubeletSettings) -> None:
        # Raw dict bodies and _preload_content=False responses: the generated types do not apply.
        self._core: Any = k8s.CoreV1Api(api)
        self._coord: Any = k8s.CoordinationV1Api(api)
        self._s = settings
        self._node_uid = ""
        self._last_report = -float("inf")
        """time.monotonic() of the last node status report."""
        self._boot_id = ""
        self.port = 0
        """The log server's port (daemonEndpoints.kubeletEndpoint.Port); 0: none."""

    def _resources(self) -> Obj:
        cap = self._s.capacity
        res: Obj = {"cpu": _quantity_cpu(cap.cpu), "memory": str(cap.memory_bytes),
                    "pods": str(self._s.max_pods)}
        if cap.gpu:
            res["nvidia.com/gpu"] = str(cap.gpu)
        return res

    def _conditions(self, server: Obj, *, now: str) -> list[Obj]:
        """Our conditions; lastTransitionTime kept from the server copy while the status is the same."""
        previous = {c.get("type"): c for c in server.get("conditions") or []}
        values = (
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID"),
            ("Ready", "True", "KubeletReady", "kubelet is posting ready status"))
        out = []
        for kind, status, reason, message in values:
            prev = previous.get(kind) or {}
            same = prev.get("status") == status and prev.get("lastTransitionTime")
            out.append({"type": kind, "status": status, "reason": reason, "message": message,
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": prev["lastTransitionTime"] if same else now})
        return out

    def _node_status(self, server: Obj, *, now: str) -> Obj:
        return {"capacity": self._resources(), "allocatable": self._resources(),
                "conditions": self._conditions(server, now=now),
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": self._s.name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                "nodeInfo": {"kubeletVersion": "v1.36.3-jobq", "architecture": "amd64",
                             "operatingSystem": "linux", "osImage": "jobq simulated kubelet",
                             "containerRuntimeVersion": "jobq://process", "kernelVersion": os.uname().release,
                             "machineID": self._s.name, "systemUUID": self._s.name,
                             "bootID": self._boot_id},
                "phase": "Running"}

    def _read_boot_id(self) -> str:
        """Stable across agent restarts; ``nodes.kill_node`` (machine death) removes it: a new boot."""
        path = self._s.node_dir / "boot_id"
        try:
            return path.read_text().strip() or str(uuid.uuid4())
        except OSError:
            boot = str(uuid.uuid4())
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(boot + "\n")
            return boot

    async def register(self) -> None:
        """Create the Node (or take over an existing one) and report its status at once."""
        self._boot_id = self._boot_id or self._read_boot_id()
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self._s.name, "labels": {
                    "kubernetes.io/hostname": self._s.name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": self._s.zone or self._s.name,
                    "node.kubernetes.io/instance-type": "jobq-process"}},
                "status": self._node_status({}, now=now_iso())}
        try:
            node = await call(self._core.create_node(body, _preload_content=False))
            log.info("node_registered", node=self._s.name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = await call(self._core.read_node(self._s.name, _preload_content=False))
            log.info("node_reregistered", node=self._s.name)
        self._node_uid = node["metadata"]["uid"]
        await self.sync_node_status(force=True)

    async def sync_node_status(self, *, force: bool = False) -> bool:
        """Compute the node status; PATCH it if it changed or the report frequency is due.

        Compared with the server's copy, as the kubelet does, so a Node the controller marked
        Unknown is reported Ready again at the next computation. Returns True if posted.
        """
        node = await call(self._core.read_node(self._s.name, _preload_content=False))
        server = node.get("status") or {}
        now = now_iso()
        status = self._node_status(server, now=now)
        due = time.monotonic() - self._last_report >= self._s.node_status_report_frequency_s
        keys = list(status["nodeInfo"])
        changed = _status_view(status, keys) != _status_view(server, keys)
        if not (force or due or changed):
            return False
        await call(self._core.patch_node_status(self._s.name, {"status": status}, _preload_content=False))
        self._last_report = time.monotonic()
        log.debug("node_status_posted", node=self._s.name, changed=changed)
        return True

    async def renew_lease(self) -> None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self._s.name, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self._s.name,
                                                  "uid": self._node_uid}]},
                "spec": {"holderIdentity": self._s.name, "leaseDurationSeconds": self._s.lease_duration_s,
                         "renewTime": now_iso(micro=True)}}
        try:
            await call(self._coord.patch_namespaced_lease(
                self._s.name, "kube-node-lease", {"spec": body["spec"]}, _preload_content=False))
        except ApiError as exc:
            if exc.status != 404:
                raise
            await call(self._coord.create_namespaced_lease("kube-node-lease", body, _preload_content=False))
