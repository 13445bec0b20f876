"""The machines of the Kubernetes benches: a control plane with simulated kubelets
(``bench.k8s_recovery``) or with hundreds of kwok nodes (``bench.k8s_dispatch``,
``bench.k8s_scale``), and a threaded observer of what its API server says (Pods, Nodes, Leases),
each change stamped on arrival."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devcluster import kwok, nodes, probe
from devcluster.build import ensure_binaries, ensure_go_etcd, find_kubectl
from devcluster.controlplane import ControlPlane, ControlPlaneConfig

NODE_COUNT = 10
NODE_CPU = 4.0
NODE_MEMORY = "8Gi"
KUBELET_CADENCE = "kubelet Lease 40 s renewed every 10 s"
KUBELET_STAGGER_S = 10.0 / NODE_COUNT
"""Kubelets start this far apart, spreading their Lease renewals over the 10 s interval."""

_T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[bench +{time.monotonic() - _T0:6.1f}s] {line}", file=sys.stderr, flush=True)


def parse_time(raw: str | None) -> float | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


# --- what the API server says, from one watch per resource ---------------------------------------


@dataclasses.dataclass
class PodSeen:
    uid: str
    namespace: str
    name: str
    labels: dict[str, str]
    first_seen: float
    node: str | None = None
    bound_seen: float | None = None
    running_seen: float | None = None
    started_at: str | None = None
    terminating_seen: float | None = None
    deleted_seen: float | None = None
    phase: str = ""


class ApiWatch:
    """Pods (all namespaces) and Nodes, listed then watched; each change stamped on arrival."""

    def __init__(self, server: str, tls: ssl.SSLContext) -> None:
        self._server = server
        self._tls = tls
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.pods: dict[str, PodSeen] = {}
        self.node_ready: dict[str, str] = {}
        self.not_ready_seen: dict[str, list[float]] = {}
        """Node -> when its Ready condition was seen turning from True to anything else."""
        self.tainted_seen: dict[str, float] = {}
        """Node -> when a NoExecute unreachable/not-ready taint was first seen on it."""
        self.renewed: dict[str, float] = {}
        """Node -> the renewTime of its Lease (the kubelet's clock, which is ours)."""
        self.synced = {"pod": threading.Event(), "node": threading.Event(), "lease": threading.Event()}
        self.errors = 0

    def start(self) -> None:
        for kind, path in (("pod", "/api/v1/pods"), ("node", "/api/v1/nodes"),
                           ("lease", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")):
            threading.Thread(target=self._run, args=(kind, path), name=f"watch-{kind}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _open(self, url: str, timeout: float) -> Any:
        return urllib.request.urlopen(url, context=self._tls, timeout=timeout)

    def _run(self, kind: str, path: str) -> None:
        handle = {"pod": self._on_pod, "node": self._on_node, "lease": self._on_lease}[kind]
        while not self._stop.is_set():
            try:
                with self._open(f"{self._server}{path}", 30) as resp:
                    listed = json.loads(resp.read())
                version = listed["metadata"]["resourceVersion"]
                for item in listed.get("items", []):
                    handle("LIST", item)
                self.synced[kind].set()
                while not self._stop.is_set():
                    url = (f"{self._server}{path}?watch=1&allowWatchBookmarks=true"
                           f"&timeoutSeconds=30&resourceVersion={version}")
                    with self._open(url, 60) as resp:
                        for raw in resp:
                            event = json.loads(raw)
                            if event["type"] == "ERROR":
                                raise RuntimeError(event["object"].get("message", "watch error"))
                            version = event["object"]["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                handle(event["type"], event["object"])
            except (OSError, ValueError, KeyError, RuntimeError, urllib.error.URLError):
                self.errors += 1
                self._stop.wait(0.5)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.time()
        meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
        with self._lock:
            seen = self.pods.get(meta["uid"])
            if seen is None:
                seen = self.pods[meta["uid"]] = PodSeen(meta["uid"], meta["namespace"], meta["name"],
                                                        dict(meta.get("labels", {})), first_seen=now)
            if spec.get("nodeName") and seen.node is None:
                seen.node, seen.bound_seen = spec["nodeName"], now
            seen.phase = status.get("phase", "")
            if meta.get("deletionTimestamp") and seen.terminating_seen is None:
                seen.terminating_seen = now
            if (seen.phase == "Running" and not meta.get("deletionTimestamp")
                    and seen.running_seen is None):
                seen.running_seen = now
                for container in status.get("containerStatuses", []):
                    seen.started_at = container.get("state", {}).get("running", {}).get("startedAt")
            if kind == "DELETED" and seen.deleted_seen is None:
                seen.deleted_seen = now

    def _on_node(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.time()
        name = obj["metadata"]["name"]
        conditions = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        ready = "Gone" if kind == "DELETED" else conditions.get("Ready", "Unknown")
        taints = {t.get("key") for t in obj.get("spec", {}).get("taints", [])
                  if t.get("effect") == "NoExecute"}
        with self._lock:
            before = self.node_ready.get(name)
            if before == "True" and ready != "True":
                self.not_ready_seen.setdefault(name, []).append(now)
            self.node_ready[name] = ready
            if taints & {"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}:
                self.tainted_seen.setdefault(name, now)

    def _on_lease(self, kind: str, obj: dict[str, Any]) -> None:
        renewed = parse_time(obj.get("spec", {}).get("renewTime"))
        if renewed is not None:
            with self._lock:
                self.renewed[obj["metadata"]["name"]] = renewed

    def lease_age(self, node: str, at: float) -> float | None:
        with self._lock:
            renewed = self.renewed.get(node)
        return None if renewed is None else round(at - renewed, 2)

    def running_in(self, namespace: str) -> tuple[int, float | None]:
        """How many pods of ``namespace`` have been seen Running, and when the last of them was."""
        with self._lock:
            times = [p.running_seen for p in self.pods.values()
                     if p.namespace == namespace and p.running_seen is not None]
        return len(times), max(times, default=None)

    def running_labels_in(self, namespace: str, label: str) -> set[str]:
        """The distinct values of ``label`` among the pods of ``namespace`` seen Running."""
        with self._lock:
            return {p.labels.get(label, "") for p in self.pods.values()
                    if p.namespace == namespace and p.running_seen is not None}

    def pods_in(self, namespace: str) -> list[PodSeen]:
        with self._lock:
            return [dataclasses.replace(p) for p in self.pods.values() if p.namespace == namespace]

    def live_in(self, namespace: str) -> int:
        """Pods of ``namespace`` that exist now (seen, not deleted)."""
        with self._lock:
            return sum(1 for p in self.pods.values() if p.namespace == namespace and p.deleted_seen is None)

    def snapshot(self) -> tuple[list[PodSeen], dict[str, str], dict[str, list[float]], dict[str, float]]:
        with self._lock:
            return ([dataclasses.replace(p) for p in self.pods.values()], dict(self.node_ready),
                    {n: list(t) for n, t in self.not_ready_seen.items()}, dict(self.tainted_seen))


# --- a cluster per row -----------------------------------------------------------------------------


def node_names() -> list[str]:
    return [f"node-{i:02d}" for i in range(1, NODE_COUNT + 1)]


class Cluster:
    """A control plane plus NODE_COUNT simulated kubelets, all started from the main thread (their
    parent-death signal is tied to it) and all stopped by ``stop``, pod processes included."""

    def __init__(self, config: ControlPlaneConfig, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.plane = ControlPlane(dataclasses.replace(config, state_dir=self.state_dir), progress=say)
        self.watch: ApiWatch | None = None

    def start(self) -> None:
        started = time.monotonic()
        state = self.plane.start()
        for name in node_names():
            # Staggered, so the Lease renewals (every 10 s) are spread over the interval as on a real
            # cluster: the Lease age at the kill then varies between the victims.
            nodes.start_kubelet(self.state_dir, nodes.NodeSpec(name, cpu=NODE_CPU, memory=NODE_MEMORY),
                                detached=False)
            time.sleep(KUBELET_STAGGER_S)
        nodes.wait_ready(self.state_dir, node_names(), timeout_s=180)
        pki = self.plane.pki
        self.watch = ApiWatch(state.server, probe.client_context(str(pki.ca.cert), pki.admin))
        self.watch.start()
        for event in self.watch.synced.values():
            event.wait(30)
        say(f"control plane + {NODE_COUNT} kubelets Ready in {time.monotonic() - started:.1f}s "
            f"(state in {self.state_dir})")

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([str(find_kubectl()), "--kubeconfig", str(self.plane.kubeconfig), *args],
                             input=stdin, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def kill_machine(self, name: str) -> None:
        if not nodes.kill_node(self.state_dir, name):
            say(f"WARNING: the kubelet of {name} was not running when it was to be killed")

    def stop(self) -> None:
        """Kubelets (SIGTERM) and every pod process they recorded (``stop_all``), then the
        control plane; each step runs even if an earlier one failed."""
        if self.watch is not None:
            self.watch.stop()
        try:
            nodes.stop_all(self.state_dir, timeout=3)
        finally:
            self.plane.stop(timeout=5)


class KwokCluster:
    """A control plane (stock settings) plus ``node_count`` fake nodes kept Ready by one kwok
    process (kwok's default stages: pods go Running once bound; pods owned by a Job are completed
    only if ``complete_job_pods``). Nodes are ``kwok.node_manifest``: ``node_cpu`` CPUs, 256Gi,
    ``max_pods`` pods each, every one its own zone."""

    def __init__(self, state_dir: Path, *, node_count: int, node_cpu: str = "32", max_pods: int = 110,
                 complete_job_pods: bool = False) -> None:
        self.state_dir = state_dir.resolve()
        self.plane: ControlPlane | None = None
        self.node_count = node_count
        self.node_cpu = node_cpu
        self.max_pods = max_pods
        self.complete_job_pods = complete_job_pods
        self.kwok_proc: subprocess.Popen[bytes] | None = None
        self.watch: ApiWatch | None = None
        self.server = ""
        self.tls: ssl.SSLContext | None = None

    def start(self) -> None:
        started = time.monotonic()
        binary = kwok.ensure_kwok(progress=say)
        binaries = ensure_binaries(progress=say)
        if not os.environ.get("JOBQ_ETCD"):  # see build.ETCD_VERSION: kwok needs a newer etcd
            binaries = dataclasses.replace(binaries, etcd=ensure_go_etcd(progress=say))
        self.plane = ControlPlane(ControlPlaneConfig(state_dir=self.state_dir, detached=False),
                                  binaries=binaries, progress=say)
        state = self.plane.start()
        self.server = state.server
        self.tls = probe.client_context(str(self.plane.pki.ca.cert), self.plane.pki.admin)
        self.kwok_proc = kwok.start_kwok(self.kubeconfig, work_dir=self.state_dir / "kwok",
                                         binary=binary, complete_job_pods=self.complete_job_pods)
        self.watch = ApiWatch(self.server, self.tls)
        self.watch.start()
        for event in self.watch.synced.values():
            event.wait(30)
        names = list(kwok.node_names(self.node_count))
        manifests = [kwok.node_manifest(n, cpu=self.node_cpu, pods=self.max_pods) for n in names]
        for chunk in range(0, len(manifests), 250):
            self.kubectl("create", "-f", "-", stdin=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": manifests[chunk:chunk + 250]}))
        deadline = time.monotonic() + 60 + self.node_count / 10
        while True:
            ready = sum(1 for n in names if self.watch.node_ready.get(n) == "True")
            if ready == len(names):
                break
            if self.kwok_proc.poll() is not None:
                raise RuntimeError(f"kwok exited with {self.kwok_proc.returncode}; see {self.state_dir}/kwok")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {ready}/{len(names)} kwok nodes Ready")
            time.sleep(0.5)
        say(f"control plane + kwok with {self.node_count} Ready nodes in {time.monotonic() - started:.1f}s "
            f"(state in {self.state_dir})")

    @property
    def kubeconfig(self) -> Path:
        assert self.plane is not None, "start() first"
        return self.plane.kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        out = subprocess.run([str(find_kubectl()), "--kubeconfig", str(self.kubeconfig), *args],
                             input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()[-2000:]}")
        return out.stdout

    def pids(self) -> dict[str, int]:
        """Process ids of the control plane's components and kwok (for CPU accounting)."""
        found = {c.name: c.pid for c in self.plane.status().components} if self.plane else {}
        if self.kwok_proc is not None:
            found["kwok"] = self.kwok_proc.pid
        return found

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        try:
            if self.kwok_proc is not None:
                kwok.stop_kwok(self.kwok_proc)
        finally:
            if self.plane is not None:
                self.plane.stop(timeout=5)
