"""The pods bound to this node: watch them, start or adopt their processes, report their status,
enforce memory limits, and carry out their (graceful) deletion."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s

from broker import contract, k8swatch
from broker.k8sapi import ApiError, Obj, call
from workers import pod_env, pod_runtime
from workers.kubelet.pod_state import LOST_MESSAGE, _env, _memory_limit, _Pod, terminated_status_body
from workers.kubelet.settings import KubeletSettings
from workers.kubelet.timestamps import _iso, now_iso
from workers.node_agent import pod_command

log = structlog.get_logger("jobq.kubelet")


class PodManager:
    """What the kubelet does with pods: run what is bound here, report it, delete it when asked."""

    def __init__(self, api: k8s.ApiClient, settings: KubeletSettings) -> None:
        # Raw dict bodies and _preload_content=False responses: the generated types do not apply.
        self._core: Any = k8s.CoreV1Api(api)
        self._s = settings
        self._pods: dict[str, _Pod] = {}
        """By pod UID: pods with a process, running or ended, until their Pod object is gone."""
        self._records: dict[str, pod_runtime.PodRecord] = {}
        """Pods an earlier incarnation of the agent started, not yet matched with the API."""
        self._finishing: set[str] = set()
        """UIDs whose final delete is in flight."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._base_env = pod_env.node_env(os.environ, passthrough=pod_env.passthrough_from_env(os.environ))
        """What a pod gets from the kubelet's environment (a container gets its image's instead)."""

    def load_records(self) -> None:
        """Read the pods an earlier incarnation of the agent recorded (to adopt or clean up)."""
        self._records = pod_runtime.read_records(self._s.pods_dir)
        if self._records:
            log.info("pod_records_found", node=self._s.name, pods=len(self._records),
                     alive=sum(1 for r in self._records.values() if r.alive))

    async def watch_pods(self) -> None:
        """List then watch the pods bound to this node; re-list on 410 Gone or a broken stream.

        After each list, processes of pods that are no longer listed are killed (force-deleted
        while we were not watching): a pod that is gone from the API never keeps running here.
        """
        pods = k8swatch.ListWatch(self._core.list_pod_for_all_namespaces, timeout_s=120,
                                  field_selector=f"spec.nodeName={self._s.name}")
        backoff = 0.2
        while True:
            try:
                items = await pods.list()
                for pod in items:
                    await self._sync(pod, deleted=False)
                self._reconcile_listing({p["metadata"]["uid"] for p in items})
                while True:
                    await pods.watch(self._on_event)
                    backoff = 0.2
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if isinstance(exc, ApiError) and exc.status == k8swatch.GONE:
                    continue  # list again
                log.warning("pod_watch_failed", node=self._s.name, error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _on_event(self, kind: str, obj: Obj) -> None:
        await self._sync(obj, deleted=kind == "DELETED")

    def _reconcile_listing(self, listed: set[str]) -> None:
        for uid, rec in list(self._records.items()):
            if uid not in listed:  # recorded by an earlier agent; its pod is gone
                del self._records[uid]
                if rec.alive:
                    pod_runtime.signal_group(rec.pid, signal.SIGKILL)
                    log.info("orphan_pod_killed", pod=rec.name, uid=uid, node=self._s.name, pid=rec.pid)
                pod_runtime.PodRecord.remove(self._s.pods_dir, uid)
        for uid, pod in list(self._pods.items()):
            if uid not in listed:
                self._gone(pod)

    def _spawn_task(self, coro: Awaitable[None], name: str) -> None:
        async def run() -> None:
            try:
                await coro
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("kubelet_call_failed", node=self._s.name, what=name, error=str(exc))
        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, pod: _Pod) -> None:
        if self._pods.get(pod.uid) is pod:
            del self._pods[pod.uid]
        pod_runtime.PodRecord.remove(self._s.pods_dir, pod.uid)
        pod_env.remove_home(self._s.node_dir / "home" / pod.uid)

    def _gone(self, pod: _Pod) -> None:
        """The Pod object is gone (force-deleted, or deleted after it ended): kill and forget.

        The record goes only once the process is dead, so an agent that dies meanwhile leaves
        its successor something to kill."""
        if self._pods.get(pod.uid) is pod:
            del self._pods[pod.uid]
        if pod.finished_at is None:
            pod.killed_for = "Killed"
            log.info("pod_force_deleted", **pod.log_fields, node=self._s.name)

            async def kill() -> None:
                await self._kill(pod, grace_s=0)
                self._forget(pod)
            self._spawn_task(kill(), f"kill-{pod.name}")
        else:
            self._forget(pod)

    async def _sync(self, obj: Obj, *, deleted: bool) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        uid = meta["uid"]
        pod = self._pods.get(uid)
        if pod is None and (rec := self._records.pop(uid, None)) is not None:
            pod = self._adopt(rec, obj)
        if deleted:  # gone from the API (force-deleted, or terminal and deleted at once)
            if pod is not None:
                self._gone(pod)
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
            # Started here before, but no process and no record is left (the machine died).
            self._spawn_task(self._post_lost(obj), f"lost-{meta['name']}")
            return
        await self._start(obj)

    def _adopt(self, rec: pod_runtime.PodRecord, obj: Obj) -> _Pod:
        """Take over a pod an earlier incarnation of the agent started."""
        pod = self._pods[rec.uid] = _Pod.from_record(rec)
        phase = (obj.get("status") or {}).get("phase", "Pending")
        terminal = phase in ("Succeeded", "Failed")
        if rec.alive:
            log.info("pod_adopted", **pod.log_fields, node=self._s.name, pid=pod.pid)
            if not terminal and phase != "Running":
                self._spawn_task(self._post_status(pod), f"running-{pod.name}")
            self._spawn_task(self._watch_adopted(pod), f"watch-{pod.name}")
            return pod
        code = pod_runtime.read_exit_file(pod.exit_file)
        try:
            ended_at = dt.datetime.fromtimestamp(pod.exit_file.stat().st_mtime, dt.UTC)
        except OSError:
            ended_at = contract.utcnow()
        if code is None:
            pod.killed_for = "ContainerStatusUnknown"
        self._ended(pod, 137 if code is None else code, at=ended_at, kill_group=False)
        if not terminal and not (obj["metadata"].get("deletionTimestamp")):
            self._spawn_task(self._post_status(pod), f"final-{pod.name}")
        return pod

    async def _start(self, obj: Obj) -> None:
        meta = obj["metadata"]
        started = contract.utcnow()
        try:
            pod = self._launch(obj, started)
        except OSError as exc:
            log.warning("pod_start_failed", pod=meta["name"], node=self._s.name,
                        reason=contract.POD_REASON_START_ERROR, error=str(exc))
            self._spawn_task(self._post_status_raw(obj, phase="Failed", terminated={
                "exitCode": contract.EXIT_START_ERROR, "reason": contract.POD_REASON_START_ERROR,
                "message": contract.tail_of(str(exc).encode()),
                "startedAt": _iso(started), "finishedAt": now_iso()}), f"failed-{meta['name']}")
            return
        log.info("pod_started", **pod.log_fields, node=self._s.name, pid=pod.pid)
        self._spawn_task(self._post_status(pod), f"running-{pod.name}")
        self._spawn_task(self._wait(pod), f"wait-{pod.name}")

    def _launch(self, obj: Obj, started: dt.datetime) -> _Pod:
        """Start the pod's process (it outlives this agent) and record it; OSError if it cannot."""
        meta, spec = obj["metadata"], obj["spec"]
        container = spec["containers"][0]
        labels = meta.get("labels") or {}
        job_id = labels.get("jobq.dev/job-id", "")
        attempt = int(labels.get("jobq.dev/attempt", "0") or 0)
        command = tuple([*(container.get("command") or []), *(container.get("args") or [])])
        # Only the container's env (none of the kubelet's); the Pod object's uid as the downward
        # API gives it (metadata.uid): the writer identity the runner stamps on its results.
        env = pod_env.pod_env(
            self._base_env, _env(container, obj, self._s.name),
            home=pod_env.make_home(self._s.node_dir / "home" / meta["uid"], None),
            node_keys={contract.ENV_NODE: self._s.name, contract.ENV_POD: meta["name"],
                       contract.ENV_POD_UID: meta["uid"]}, default_nats_url=self._s.nats_url,
            default_nats_ca=os.environ.get(contract.ENV_NATS_CA, ""))
        argv = pod_command(contract.PodSpec(name=meta["name"], job_id=job_id or meta["name"], attempt=attempt,
                                            queue="", command=command), python=self._s.python)
        if not argv:
            raise OSError("the container has no command (images are not run here)")
        log_path = self._s.node_dir / f"{meta['name']}.log"
        exit_file = self._s.pods_dir / f"{meta['uid']}.exit"
        try:
            offset = log_path.stat().st_size
        except OSError:
            offset = 0
        process = pod_runtime.spawn_detached(argv, env=env, log_path=log_path, exit_file=exit_file)
        pod = self._pods[meta["uid"]] = _Pod(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], job_id=job_id,
            attempt=attempt, image=container.get("image", ""), container=container["name"],
            limit_bytes=_memory_limit(container), pid=process.pid,
            start_ticks=pod_runtime.start_ticks(process.pid) or 0, log_path=log_path, log_offset=offset,
            exit_file=exit_file, started_at=started,
            message_policy=container.get("terminationMessagePolicy") or "File", process=process)
        pod.record().save(self._s.pods_dir)
        return pod

    async def _wait(self, pod: _Pod) -> None:
        assert pod.process is not None
        code = pod_runtime.exit_code(await pod_runtime.wait_exit(pod.process))
        self._ended(pod, code)
        if not pod.deleting:
            await self._post_status(pod)

    async def _watch_adopted(self, pod: _Pod) -> None:
        """An adopted pod is not our child: poll its liveness, then read its exit file."""
        await pod_runtime.wait_gone(pod.pid, pod.start_ticks, poll_s=0.5)
        code = pod_runtime.read_exit_file(pod.exit_file)
        if code is None:  # SIGKILLed: by us (OOM, grace expired), or by someone else
            code = 137
            pod.killed_for = pod.killed_for or "ContainerStatusUnknown"
        self._ended(pod, code)
        if not pod.deleting:
            await self._post_status(pod)

    def _ended(self, pod: _Pod, code: int, *, at: dt.datetime | None = None, kill_group: bool = True) -> None:
        if kill_group:
            pod_runtime.signal_group(pod.pid, signal.SIGKILL)  # leftovers of the group
        pod.exit_code, pod.finished_at = code, at or contract.utcnow()
        if pod.killed_for == "ContainerStatusUnknown":
            pod.message = LOST_MESSAGE
        elif pod.message_policy == "FallbackToLogsOnError" and (code != 0 or pod.killed_for == "OOMKilled"):
            pod.message = contract.tail_of(pod.log_tail())
        pod.ended.set()
        log.info("pod_exited", **pod.log_fields, node=self._s.name, exit_code=code,
                 reason=pod.killed_for or ("Completed" if code == 0 else "Error"))

    async def _post_status(self, pod: _Pod) -> None:
        """Post the pod's current state (computed at send time, so posts never go backwards)."""
        async with pod.lock:
            await self._patch_status(pod.namespace, pod.name, pod.status_body())

    async def _post_status_raw(self, obj: Obj, *, phase: str, terminated: Obj) -> None:
        await self._patch_status(obj["metadata"]["namespace"], obj["metadata"]["name"],
                                 terminated_status_body(obj, phase=phase, terminated=terminated))

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
            "exitCode": 137, "reason": "ContainerStatusUnknown", "message": LOST_MESSAGE,
            "finishedAt": now_iso()})

    async def _kill(self, pod: _Pod, *, grace_s: float) -> None:
        if pod.finished_at is None:
            await pod_runtime.terminate_group(pod.pid, pod.start_ticks, grace_s=grace_s)

    async def _delete(self, pod: _Pod, *, grace_s: float) -> None:
        """Graceful deletion: SIGTERM, grace, SIGKILL, final status, then the final DELETE."""
        if pod.finished_at is None:
            pod.killed_for = "Killed"
            log.info("pod_terminating", **pod.log_fields, node=self._s.name, grace_s=grace_s)
        await self._kill(pod, grace_s=grace_s)
        await pod.ended.wait()
        await self._post_status(pod)
        await self._final_delete(pod.namespace, pod.name, pod.uid)
        self._forget(pod)

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
        """Every second: OOM-kill pods over ``limits.memory`` (RSS of the group); sample log sizes."""
        running = {p.pid: p for p in self._pods.values() if p.finished_at is None}
        limited = {pid for pid, p in running.items() if p.limit_bytes is not None}
        for pgid, rss in pod_runtime.rss_by_group(limited).items():
            pod = running[pgid]
            if pod.limit_bytes is not None and rss > pod.limit_bytes and not pod.killed_for:
                pod.killed_for = "OOMKilled"
                pod_runtime.signal_group(pgid, signal.SIGKILL)
                log.warning("pod_oom_killed", **pod.log_fields, node=self._s.name, reason="OOMKilled",
                            rss_bytes=rss, limit_bytes=pod.limit_bytes)
        wall = time.time()
        for pod in running.values():
            size = pod.log_size()
            if not pod.log_marks or pod.log_marks[-1][1] != size:
                pod.log_marks.append((wall, size))
                if len(pod.log_marks) > 4096:
                    del pod.log_marks[1::2]  # coarser, same span

    def find_pod(self, namespace: str, name: str) -> _Pod | None:
        """The pod ``namespace/name`` this node ran or runs (the newest if a name was reused)."""
        found = [p for p in self._pods.values() if p.namespace == namespace and p.name == name]
        return max(found, key=lambda p: p.started_at) if found else None

    def still_known(self, pod: _Pod) -> bool:
        return self._pods.get(pod.uid) is pod

    async def shutdown(self) -> int:
        """Cancel the pod tasks; the containers keep running (as with a real container runtime).
        Returns how many are still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return sum(1 for p in self._pods.values() if p.finished_at is None)
