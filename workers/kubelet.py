"""The node agent in kubelet mode: one OS process that is one Node of a real Kubernetes cluster.

It registers a Node (capacity, allocatable, Ready), renews its Lease in ``kube-node-lease`` every
``lease_interval_s``, re-posts Ready with a fresh heartbeat every ``status_interval_s``, watches
the pods bound to it (``fieldSelector=spec.nodeName=<node>``) and runs each pod's first container
as a local process group through ``workers.pod_runtime`` (image ignored; command, args and env
honoured; ``jobq-runner`` is this installation's task runner). It reports pod status through
``pods/status`` and honours graceful deletion: SIGTERM, the grace period, SIGKILL, the final
status, then DELETE with ``gracePeriodSeconds=0`` and a UID precondition, as the kubelet does.

SIGKILL of the agent is a node death: its pods die with it (parent-death signal), its Lease stops
and the node lifecycle controller marks the Node Unknown after its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from broker import contract
from broker.k8sapi import ApiError, Obj, call
from workers import pod_runtime
from workers.node_agent import pod_command

log = structlog.get_logger("jobq.kubelet")



def now_iso(*, micro: bool = False) -> str:
    at = dt.datetime.now(dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _iso(at: dt.datetime | None) -> str | None:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else None


@dataclasses.dataclass(frozen=True, slots=True)
class KubeletSettings:
    name: str
    kubeconfig: str
    """Path of the node's kubeconfig (identity system:node:<name>); empty: in-cluster."""
    capacity: contract.Resources
    max_pods: int = 110
    zone: str = ""
    """topology.kubernetes.io/zone; default: the node name (one zone per node, see devcluster README)."""
    lease_interval_s: float = 1.0
    """Seconds between Lease renewals."""
    lease_duration_s: int = 40
    status_interval_s: float = 5.0
    """Seconds between Ready heartbeats on the Node status."""
    max_grace_s: float = 30.0
    """Upper bound of a deleted pod's grace period, s."""
    work_dir: Path = Path(".jobq/nodes")
    """Pod logs go to <work_dir>/<node>/<pod>.log."""
    nats_url: str = ""
    """JOBQ_NATS_URL for pods that bring none."""
    python: str = sys.executable


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
    process: asyncio.subprocess.Process
    started_at: dt.datetime
    exit_code: int | None = None
    finished_at: dt.datetime | None = None
    killed_for: str = ""
    deleting: bool = False
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def log_fields(self) -> dict[str, Any]:
        return {"pod": self.name, "job_id": self.job_id, "attempt": self.attempt}


def _quantity_cpu(cpu: float) -> str:
    return f"{round(cpu * 1000)}m"


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


class Kubelet:
    def __init__(self, api: k8s.ApiClient, settings: KubeletSettings) -> None:
        self._api = api
        # Raw dict bodies and _preload_content=False responses: the generated types do not apply.
        self._core: Any = k8s.CoreV1Api(api)
        self._coord: Any = k8s.CoordinationV1Api(api)
        self._s = settings
        self._pods: dict[str, _Pod] = {}
        """By pod UID."""
        self._finishing: set[str] = set()
        """UIDs whose final delete is in flight."""
        self._node_uid = ""
        self._ready_since = now_iso()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- node -------------------------------------------------------------------------------

    def _resources(self) -> Obj:
        cap = self._s.capacity
        res: Obj = {"cpu": _quantity_cpu(cap.cpu), "memory": str(cap.memory_bytes),
                    "pods": str(self._s.max_pods)}
        if cap.gpu:
            res["nvidia.com/gpu"] = str(cap.gpu)
        return res

    def _conditions(self) -> list[Obj]:
        at = now_iso()

        def cond(kind: str, status: str, reason: str, message: str) -> Obj:
            return {"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": at, "lastTransitionTime": self._ready_since}
        return [cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "sufficient memory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "sufficient PID"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status")]

    def _node_status(self) -> Obj:
        return {"capacity": self._resources(), "allocatable": self._resources(),
                "conditions": self._conditions(),
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": self._s.name}],
                "nodeInfo": {"kubeletVersion": "v1.36.3-jobq", "kubeProxyVersion": "",
                             "architecture": "amd64",
                             "operatingSystem": "linux", "osImage": "jobq simulated kubelet",
                             "containerRuntimeVersion": "jobq://process", "kernelVersion": os.uname().release,
                             "machineID": self._s.name, "systemUUID": self._s.name,
                             "bootID": str(os.getpid())},
                "phase": "Running"}

    async def register(self) -> None:
        """Create the Node (or take over an existing one) and post Ready=True."""
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self._s.name, "labels": {
                    "kubernetes.io/hostname": self._s.name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": self._s.zone or self._s.name,
                    "node.kubernetes.io/instance-type": "jobq-process"}},
                "status": self._node_status()}
        try:
            node = await call(self._core.create_node(body, _preload_content=False))
            log.info("node_registered", node=self._s.name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = await call(self._core.read_node(self._s.name, _preload_content=False))
            log.info("node_reregistered", node=self._s.name)
        self._node_uid = node["metadata"]["uid"]
        await self.post_ready()

    async def post_ready(self) -> None:
        await call(self._core.patch_node_status(self._s.name, {"status": self._node_status()},
                                                _preload_content=False))

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

    async def _every(self, interval_s: float, action: Callable[[], Awaitable[None]], what: str) -> None:
        failures = 0
        while True:
            try:
                await action()
                failures = 0
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                log.warning("kubelet_call_failed", node=self._s.name, what=what, error=str(exc),
                            failures=failures)
            await asyncio.sleep(interval_s if failures == 0 else min(interval_s, 0.2 * failures))

    # --- pods -------------------------------------------------------------------------------

    async def watch_pods(self) -> None:
        """List then watch the pods bound to this node; re-list on 410 Gone or a broken stream."""
        selector = f"spec.nodeName={self._s.name}"
        backoff = 0.2
        while True:
            try:
                listing = await call(self._core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False))
                version = listing["metadata"]["resourceVersion"]
                for pod in listing.get("items", []):
                    await self._sync(pod, deleted=False)
                while True:
                    resp: aiohttp.ClientResponse = await self._core.list_pod_for_all_namespaces(
                        field_selector=selector, watch=True, resource_version=version,
                        allow_watch_bookmarks=True, timeout_seconds=120, _preload_content=False)
                    async with resp:
                        if resp.status == 410:
                            break
                        if resp.status != 200:
                            raise ApiError(resp.status, (await resp.read())[:300].decode(errors="replace"))
                        backoff = 0.2
                        gone = False
                        async for line in resp.content:
                            event = json.loads(line)
                            obj = event["object"]
                            if event["type"] == "ERROR":
                                gone = obj.get("code") == 410
                                if not gone:
                                    raise ApiError(int(obj.get("code", 500)), str(obj.get("message")))
                                break
                            version = obj["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                await self._sync(obj, deleted=event["type"] == "DELETED")
                        if gone:
                            break
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("pod_watch_failed", node=self._s.name, error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _spawn_task(self, coro: Awaitable[None], name: str) -> None:
        async def run() -> None:
            try:
                await coro
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("kubelet_call_failed", node=self._s.name, what=name, error=str(exc))
        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync(self, obj: Obj, *, deleted: bool) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        uid = meta["uid"]
        pod = self._pods.get(uid)
        if deleted:  # gone from the API (force-deleted, or terminal and deleted at once)
            self._pods.pop(uid, None)
            if pod is not None and pod.finished_at is None:
                pod.killed_for = "Killed"
                log.info("pod_force_deleted", **pod.log_fields, node=self._s.name)
                self._spawn_task(self._kill(pod, grace_s=0), f"kill-{meta['name']}")
            return
        phase = status.get("phase", "Pending")
        if meta.get("deletionTimestamp"):
            if pod is not None:
                if not pod.deleting:
                    pod.deleting = True
                    grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                    self._spawn_task(self._delete(pod, grace_s=min(grace, self._s.max_grace_s)),
                                     f"delete-{meta['name']}")
            elif uid not in self._finishing:
                self._finishing.add(uid)
                self._spawn_task(self._finalize_orphan(obj), f"finalize-{meta['name']}")
            return
        if pod is not None or phase in ("Succeeded", "Failed"):
            return
        if phase == "Running" or status.get("containerStatuses"):
            # Started by an earlier incarnation of this agent: its processes died with it.
            self._spawn_task(self._post_lost(obj), f"lost-{meta['name']}")
            return
        await self._start(obj)

    async def _start(self, obj: Obj) -> None:
        meta, spec = obj["metadata"], obj["spec"]
        container = spec["containers"][0]
        labels = meta.get("labels") or {}
        job_id = labels.get("jobq.dev/job-id", "")
        attempt = int(labels.get("jobq.dev/attempt", "0") or 0)
        command = tuple([*(container.get("command") or []), *(container.get("args") or [])])
        env = {**os.environ, **_env(container, obj, self._s.name), "JOBQ_NODE": self._s.name}
        if self._s.nats_url:
            env.setdefault("JOBQ_NATS_URL", self._s.nats_url)
        argv = pod_command(contract.PodSpec(name=meta["name"], job_id=job_id or meta["name"], attempt=attempt,
                                            queue="", command=command), python=self._s.python)
        started = contract.utcnow()
        log_path = self._s.work_dir / self._s.name / f"{meta['name']}.log"
        try:
            if not argv:
                raise OSError("the container has no command (images are not run here)")
            process = await pod_runtime.spawn(argv, env=env, log_path=log_path)
        except OSError as exc:
            log.warning("pod_start_failed", pod=meta["name"], job_id=job_id, attempt=attempt,
                        node=self._s.name, reason="StartError", error=str(exc))
            self._spawn_task(self._post_status_raw(obj, phase="Failed", terminated={
                "exitCode": 128, "reason": "StartError", "message": str(exc)[:500],
                "startedAt": _iso(started), "finishedAt": now_iso()}), f"failed-{meta['name']}")
            return
        pod = self._pods[meta["uid"]] = _Pod(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], job_id=job_id,
            attempt=attempt, image=container.get("image", ""), container=container["name"],
            limit_bytes=_memory_limit(container), process=process, started_at=started)
        log.info("pod_started", **pod.log_fields, node=self._s.name, pid=process.pid)
        self._spawn_task(self._post_status(pod), f"running-{pod.name}")
        self._spawn_task(self._wait(pod), f"wait-{pod.name}")

    async def _wait(self, pod: _Pod) -> None:
        code = pod_runtime.exit_code(await pod.process.wait())
        pod_runtime.signal_group(pod.process.pid, signal.SIGKILL)
        pod.exit_code, pod.finished_at = code, contract.utcnow()
        log.info("pod_exited", **pod.log_fields, node=self._s.name, exit_code=code,
                 reason=pod.killed_for or ("Completed" if code == 0 else "Error"))
        if not pod.deleting:
            await self._post_status(pod)

    def _container_status(self, pod: _Pod) -> Obj:
        state: Obj
        if pod.finished_at is None:
            state = {"running": {"startedAt": _iso(pod.started_at)}}
        else:
            reason = pod.killed_for if pod.killed_for == "OOMKilled" else (
                "Completed" if pod.exit_code == 0 else "Error")
            state = {"terminated": {"exitCode": pod.exit_code, "reason": reason,
                                    "startedAt": _iso(pod.started_at), "finishedAt": _iso(pod.finished_at),
                                    "containerID": f"jobq://{pod.process.pid}"}}
        running = pod.finished_at is None
        return {"name": pod.container, "image": pod.image, "imageID": "", "containerID": f"jobq://{pod.process.pid}",
                "ready": running, "started": running, "restartCount": 0, "state": state}

    async def _post_status(self, pod: _Pod) -> None:
        """Post the pod's current state (computed at send time, so posts never go backwards)."""
        async with pod.lock:
            if pod.finished_at is None:
                phase = "Running"
            else:
                phase = "Succeeded" if pod.exit_code == 0 and not pod.killed_for else "Failed"
            ready = "True" if phase == "Running" else "False"
            reason = "" if phase == "Running" else "PodCompleted"
            conditions = [{"type": t, "status": s, "lastTransitionTime": now_iso(), "reason": reason}
                          for t, s in (("PodReadyToStartContainers", "True"), ("Initialized", "True"),
                                       ("Ready", ready), ("ContainersReady", ready))]
            body = {"status": {"phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                               "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                               "startTime": _iso(pod.started_at), "conditions": conditions,
                               "containerStatuses": [self._container_status(pod)]}}
            await self._patch_status(pod.namespace, pod.name, body)

    async def _post_status_raw(self, obj: Obj, *, phase: str, terminated: Obj) -> None:
        container = obj["spec"]["containers"][0]
        body = {"status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now_iso()}],
            "containerStatuses": [{"name": container["name"], "image": container.get("image", ""),
                                   "imageID": "", "ready": False, "started": False, "restartCount": 0,
                                   "state": {"terminated": terminated}}]}}
        await self._patch_status(obj["metadata"]["namespace"], obj["metadata"]["name"], body)

    async def _patch_status(self, namespace: str, name: str, body: Obj) -> None:
        try:
            await call(self._core.patch_namespaced_pod_status(name, namespace, body, _preload_content=False))
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def _post_lost(self, obj: Obj) -> None:
        log.warning("pod_lost_on_restart", pod=obj["metadata"]["name"], node=self._s.name,
                    reason="ContainerStatusUnknown")
        await self._post_status_raw(obj, phase="Failed", terminated={
            "exitCode": 137, "reason": "ContainerStatusUnknown",
            "message": "the node agent restarted; the container is gone", "finishedAt": now_iso()})

    async def _kill(self, pod: _Pod, *, grace_s: float) -> None:
        await pod_runtime.terminate(pod.process, grace_s=grace_s)

    async def _delete(self, pod: _Pod, *, grace_s: float) -> None:
        """Graceful deletion: SIGTERM, grace, SIGKILL, final status, then the final DELETE."""
        if pod.finished_at is None:
            pod.killed_for = "Killed"
            log.info("pod_terminating", **pod.log_fields, node=self._s.name, grace_s=grace_s)
        await self._kill(pod, grace_s=grace_s)
        while pod.finished_at is None:
            await asyncio.sleep(0.01)
        await self._post_status(pod)
        await self._final_delete(pod.namespace, pod.name, pod.uid)
        self._pods.pop(pod.uid, None)

    async def _finalize_orphan(self, obj: Obj) -> None:
        meta = obj["metadata"]
        try:
            await self._final_delete(meta["namespace"], meta["name"], meta["uid"])
        finally:
            self._finishing.discard(meta["uid"])

    async def _final_delete(self, namespace: str, name: str, uid: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        try:
            await call(self._core.delete_namespaced_pod(name, namespace, body=body, _preload_content=False))
            log.info("pod_deleted", pod=name, node=self._s.name)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise

    async def enforce_memory(self) -> None:
        running = {p.process.pid: p for p in self._pods.values()
                   if p.finished_at is None and p.limit_bytes is not None}
        for pgid, rss in pod_runtime.rss_by_group(set(running)).items():
            pod = running[pgid]
            if pod.limit_bytes is not None and rss > pod.limit_bytes and not pod.killed_for:
                pod.killed_for = "OOMKilled"
                pod_runtime.signal_group(pgid, signal.SIGKILL)
                log.warning("pod_oom_killed", **pod.log_fields, node=self._s.name, reason="OOMKilled",
                            rss_bytes=rss, limit_bytes=pod.limit_bytes)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while True:
            try:
                await self.register()
                break
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("node_register_failed", node=self._s.name, error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        log.info("node_started", node=self._s.name, cpu=self._s.capacity.cpu, memory=self._s.capacity.memory,
                 gpu=self._s.capacity.gpu, pid=os.getpid())
        loops = [asyncio.create_task(self._every(self._s.lease_interval_s, self.renew_lease, "lease")),
                 asyncio.create_task(self._every(self._s.status_interval_s, self.post_ready, "status")),
                 asyncio.create_task(self._every(1.0, self.enforce_memory, "memory")),
                 asyncio.create_task(self.watch_pods())]
        try:
            await stop.wait()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Graceful stop of the agent: its pods are killed (their Pod objects stay, as on a reboot)."""
        running = [p for p in self._pods.values() if p.finished_at is None]
        for pod in running:
            pod.killed_for = "Evicted"
        await asyncio.gather(*(pod_runtime.terminate(p.process, grace_s=2) for p in running),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("node_stopped", node=self._s.name, killed=len(running))


async def api_client(kubeconfig: str) -> k8s.ApiClient:
    """An ApiClient from a kubeconfig file, or from the in-cluster service account."""
    if kubeconfig:
        return await k8s_config.new_client_from_config(config_file=kubeconfig)
    load_incluster: Any = k8s_config.load_incluster_config
    load_incluster()
    return k8s.ApiClient()


async def run_kubelet(settings: KubeletSettings, stop: asyncio.Event) -> None:
    api = await api_client(settings.kubeconfig)
    try:
        await Kubelet(api, settings).run(stop)
    finally:
        with contextlib.suppress(Exception):
            await api.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m workers.kubelet --name N --kubeconfig PATH [--cpu C --memory M --gpu G]``."""
    import argparse

    from broker import logsetup

    parser = argparse.ArgumentParser(prog="jobq kubelet", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--kubeconfig", default="")
    parser.add_argument("--cpu", type=float, default=2.0)
    parser.add_argument("--memory", default="4Gi")
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--zone", default="")
    parser.add_argument("--lease-interval", type=float, default=1.0)
    parser.add_argument("--work-dir", type=Path, default=Path(".jobq/nodes"))
    args = parser.parse_args(argv)
    logsetup.configure(fmt="console" if os.environ.get("JOBQ_LOG_FORMAT") == "console" else "json",
                       component="kubelet")
    settings = KubeletSettings(name=args.name, kubeconfig=args.kubeconfig,
                               capacity=contract.Resources(cpu=args.cpu, memory=args.memory, gpu=args.gpu),
                               zone=args.zone, lease_interval_s=args.lease_interval, work_dir=args.work_dir,
                               nats_url=os.environ.get("JOBQ_NATS_URL", ""))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_kubelet(settings, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
