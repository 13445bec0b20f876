"""KubernetesBackend: each attempt is a Pod in one namespace of a real Kubernetes cluster.

Pods are named ``job-<job_id>-<attempt>`` and labelled with the job id and attempt, so creating
one twice is harmless (409 AlreadyExists is adoption) and ``list_pods`` needs no API call: three
informers (pods with our label, Nodes, node Leases) keep a cache that the dispatcher reads every
pass. The backend's own verdict on a node (``PodState.node_ready``/``node_why``) is "not ready"
as soon as either

* the Node is gone, or its ``Ready`` condition is not ``True`` (the node lifecycle controller marks
  it Unknown after ``--node-monitor-grace-period``, 50 s by default), or
* its Lease in ``kube-node-lease`` has not been renewed for the Lease's own
  ``leaseDurationSeconds`` (40 s for a stock kubelet, which renews every 10 s), timed on our clock
  from when we saw the renewal arrive,

whichever comes first. The dispatcher combines this with the attempts' heartbeats, which are much
faster (docs/design/node-loss.md), and asks for a force delete (``gracePeriodSeconds=0``) of pods on
a node it judged lost: nothing else would ever finish their deletion.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self, TypeVar

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from broker import contract, settings
from broker.backends import base, k8s_objects
from broker.backends.k8s_informer import Informer
from broker.k8sapi import ApiError, Obj, call

log = structlog.get_logger("jobq.backend.kubernetes")

T = TypeVar("T")
LEASE_NAMESPACE = "kube-node-lease"
DEFAULT_LEASE_DURATION_S = 40.0
"""The kubelet's nodeLeaseDurationSeconds default, for a Lease that names none."""


class KubernetesBackend:
    name = "kubernetes"
    cluster_waits = True

    def __init__(self, config: settings.BackendSettings, *, nc: object | None = None,
                 retries: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._ns = config.namespace
        self._retries = retries
        self._clock = clock
        self._api: k8s.ApiClient | None = None
        self._wakeups: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_seen: dict[str, float] = {}
        """Node -> time.monotonic() when its Lease renewTime last advanced (or its age at list)."""
        self._lease_renew: dict[str, str] = {}
        self._lease_duration: dict[str, float] = {}
        self._ready: dict[str, bool] = {}
        self._not_ready_since: dict[str, dt.datetime] = {}
        self._node_states: dict[str, base.NodeState] = {}
        """Node -> its last computed state; rebuilt only for nodes marked dirty by a change."""
        self._dirty_nodes: set[str] = set()
        self._node_list: list[base.NodeState] | None = None
        self.pods: Informer | None = None
        self.nodes: Informer | None = None
        self.leases: Informer | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            if self._config.kubeconfig:
                self._api = await k8s_config.new_client_from_config(config_file=self._config.kubeconfig)
            else:
                load_incluster: Any = k8s_config.load_incluster_config
                load_incluster()
                self._api = k8s.ApiClient()
        except (OSError, k8s_config.ConfigException) as exc:
            raise base.BackendUnavailable(f"cannot load Kubernetes credentials: {exc}") from exc
        # Raw dict bodies and _preload_content=False responses: the generated types do not apply.
        core: Any = k8s.CoreV1Api(self._api)
        coord: Any = k8s.CoordinationV1Api(self._api)
        self._core = core
        selector = f"{k8s_objects.LABEL_MANAGED}={k8s_objects.MANAGED_BY},{k8s_objects.LABEL_JOB}"
        self.pods = Informer("pod", functools.partial(core.list_namespaced_pod, self._ns,
                                                       label_selector=selector), self._on_change,
                             transform=k8s_objects.trim_pod,
                             indexers={"job": k8s_objects.job_of, "node": k8s_objects.node_of})
        self.nodes = Informer("node", core.list_node, self._on_change, transform=k8s_objects.trim_node)
        self.leases = Informer("lease", functools.partial(coord.list_namespaced_lease, LEASE_NAMESPACE),
                               self._on_change, transform=k8s_objects.trim_meta)
        for informer in (self.pods, self.nodes, self.leases):
            self._tasks.append(asyncio.create_task(informer.run(), name=f"k8s-informer-{informer.kind}"))
        self._tasks.append(asyncio.create_task(self._watch_liveness(), name="k8s-liveness"))
        self._tasks.append(asyncio.create_task(self._ensure_namespace(), name="k8s-namespace"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.close()

    async def wait_synced(self) -> None:
        assert self.pods and self.nodes and self.leases, "use the backend as an async context manager"
        await asyncio.gather(self.pods.synced.wait(), self.nodes.synced.wait(), self.leases.synced.wait())

    async def _ensure_namespace(self) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": self._ns, "labels": {k8s_objects.LABEL_MANAGED: k8s_objects.MANAGED_BY}}}
        try:
            await self._retry(lambda: self._core.create_namespace(body, _preload_content=False), "namespace")
            log.info("namespace_created", namespace=self._ns)
        except base.BackendError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ApiError) and cause.status in (409, 403)):
                log.warning("namespace_not_ensured", namespace=self._ns, error=str(exc))

    # --- API calls --------------------------------------------------------------------------

    async def _retry(self, request: Callable[[], Awaitable[Any]], what: str) -> Obj:
        """One API call; 429/5xx and connection errors are retried with backoff, others mapped."""
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                return await call(request())
            except ApiError as exc:
                if exc.status == 429 or exc.status >= 500:
                    if attempt == self._retries:
                        raise base.BackendUnavailable(f"{what}: {exc}") from exc
                    await asyncio.sleep(exc.retry_after or delay)
                elif exc.status == 422:
                    raise base.PodRejected(f"{what}: {exc.message}") from exc
                else:
                    raise base.BackendError(f"{what}: {exc}") from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt == self._retries:
                    raise base.BackendUnavailable(f"{what}: cannot reach the API server: {exc!r}") from exc
                await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    # --- observing --------------------------------------------------------------------------

    def _on_change(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if kind == "pod":
            job_id = k8s_objects.job_of(obj)
            if job_id:
                self._wakeups.put_nowait(job_id)
            for pod in (old, new):  # its node's allocation may have changed
                node = k8s_objects.node_of(pod) if pod is not None else None
                if node is not None:
                    self._dirty(node)
        elif kind == "lease":
            node = obj["metadata"]["name"]
            renew = (new or {}).get("spec", {}).get("renewTime")
            if new is None:
                self._lease_seen.pop(node, None)
                self._lease_renew.pop(node, None)
                self._lease_duration.pop(node, None)
            else:
                spec = new.get("spec") or {}
                duration = spec.get("leaseDurationSeconds") or DEFAULT_LEASE_DURATION_S
                self._lease_duration[node] = float(duration)
                if renew and renew != self._lease_renew.get(node):
                    self._lease_renew[node] = renew
                    at = k8s_objects.parse_time(renew)
                    age = max(0.0, (contract.utcnow() - at).total_seconds()) if at else 0.0
                    # A live stream delivers renewals as they happen; a (re)list may show an old one.
                    self._lease_seen[node] = self._clock() - (age if old is None else 0.0)
            self._dirty(node)
            self._check_node(node)
        elif kind == "node":
            self._dirty(obj["metadata"]["name"])
            self._check_node(obj["metadata"]["name"])

    def _dirty(self, node: str) -> None:
        self._dirty_nodes.add(node)
        self._node_list = None

    def _lease_expired(self, node: str, now: float) -> float | None:
        """Seconds since the node's Lease was renewed, if that is past its own duration."""
        seen = self._lease_seen.get(node)
        if seen is None:
            return None
        age = now - seen
        return age if age > self._lease_duration.get(node, DEFAULT_LEASE_DURATION_S) else None

    def _node_verdict(self, node: str) -> tuple[bool, str]:
        assert self.nodes is not None
        if not self.nodes.synced.is_set():
            return True, ""  # not known yet; wait_synced() gates the dispatcher until it is
        obj = self.nodes.items.get(f"/{node}")
        if obj is None:
            return False, f"node {node}: the Node object was deleted"
        ready = k8s_objects.conditions(obj).get("Ready", {})
        if ready.get("status") != "True":
            return False, (f"node {node}: Ready is {ready.get('status', 'missing')} "
                           f"({ready.get('reason', '')}: {ready.get('message', '')})")
        now = self._clock()
        age = self._lease_expired(node, now)
        # Every Lease expired at once is more likely our watch than every node: then trust the
        # conditions alone (the node lifecycle controller has the same "disruption mode").
        if age is not None and any(self._lease_expired(other, now) is None for other in self._lease_seen):
            duration = self._lease_duration.get(node, DEFAULT_LEASE_DURATION_S)
            return False, (f"node {node}: Lease not renewed for {age:.0f}s "
                           f"(leaseDurationSeconds {duration:.0f})")
        return True, ""

    def _check_node(self, node: str) -> None:
        if self.nodes is None or not self.nodes.synced.is_set():
            return
        ready, reason = self._node_verdict(node)
        before = self._ready.get(node)
        if before == ready:
            return
        self._ready[node] = ready
        self._dirty(node)
        if ready:
            self._not_ready_since.pop(node, None)
            if before is not None:
                log.info("node_ready", node=node)
        else:
            self._not_ready_since[node] = contract.utcnow()
            log.warning("node_not_ready", node=node, reason=reason)
        if before is not None:
            for pod in self._pods_on(node):
                job_id = (pod["metadata"].get("labels") or {}).get(k8s_objects.LABEL_JOB)
                if job_id:
                    self._wakeups.put_nowait(job_id)

    def _pods_on(self, node: str) -> list[Obj]:
        assert self.pods is not None
        return self.pods.by_index("node", node)

    async def _watch_liveness(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.nodes is not None:
                for key in list(self.nodes.items):
                    self._check_node(key.lstrip("/"))

    def node_ready(self, node: str | None) -> bool:
        if node is None:
            return True
        ready, _ = self._node_verdict(node)
        return ready

    async def watch(self) -> AsyncIterator[str]:
        while True:
            yield await self._wakeups.get()

    # --- reading ----------------------------------------------------------------------------

    async def list_pods(self, *, job_id: str | None = None) -> list[base.PodState]:
        assert self.pods is not None
        pods = self.pods.items.values() if job_id is None else self.pods.by_index("job", job_id)
        out = []
        for pod in pods:
            node = k8s_objects.node_of(pod)
            ready, why = self._node_verdict(node) if node else (True, "")
            out.append(k8s_objects.pod_state(pod, node_ready=ready, node_why=why))
        return out

    async def list_nodes(self) -> list[base.NodeState]:
        """Every Node's state, sorted by name. Read on every pass over a queued job, so it is
        served from a cache: only nodes that changed since (the Node, its Lease, a pod on it, or
        our verdict on it) are recomputed, each from its own pods (the "node" index)."""
        assert self.nodes is not None
        if self._node_list is None:
            for name in self._dirty_nodes:
                obj = self.nodes.items.get(f"/{name}")
                if obj is None:
                    self._node_states.pop(name, None)
                else:
                    self._node_states[name] = self._node_state(name, obj)
            self._dirty_nodes.clear()
            self._node_list = [self._node_states[n] for n in sorted(self._node_states)]
        return list(self._node_list)

    def _node_state(self, name: str, obj: Obj) -> base.NodeState:
        active = [p for p in self._pods_on(name)
                  if (p.get("status") or {}).get("phase", "Pending") in ("Pending", "Running")]
        requests = [k8s_objects.pod_requests(p) for p in active]
        ready = k8s_objects.conditions(obj).get("Ready", {})
        renew = self._lease_renew.get(name) or ready.get("lastHeartbeatTime")
        verdict, why = self._node_verdict(name)
        return base.NodeState(
            name=name, ready=verdict, not_ready_reason=why, capacity=k8s_objects.node_capacity(obj),
            allocated_cpu=sum(r[0] for r in requests), allocated_memory=sum(r[1] for r in requests),
            pods=len(active), last_heartbeat=k8s_objects.parse_time(renew),
            not_ready_since=self._not_ready_since.get(name))

    # --- acting -----------------------------------------------------------------------------

    async def create_pod(self, spec: contract.PodSpec) -> None:
        assert self.pods is not None
        body = k8s_objects.pod_manifest(spec, namespace=self._ns, image=self._config.image,
                                        allow_privileged=self._config.allow_privileged,
                                        service_account=self._config.pod_service_account,
                                        image_pull_secrets=self._config.image_pull_secrets,
                                        gpu_node_selector=self._config.gpu_node_selector,
                                        gpu_tolerations=self._config.gpu_tolerations,
                                        nats_secret=self._config.pod_nats_secret,
                                        nats_ca_secret=self._config.pod_nats_ca_secret)
        try:
            created = await self._retry(
                lambda: self._core.create_namespaced_pod(self._ns, body, _preload_content=False),
                f"create pod {spec.name}")
        except base.BackendError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiError) and cause.status == 409:
                log.info("pod_adopted", pod=spec.name, job_id=spec.job_id, attempt=spec.attempt)
                return
            if isinstance(cause, ApiError) and cause.status == 403 and "serviceaccount" not in cause.message:
                raise base.PodRejected(f"create pod {spec.name}: {cause.message}") from cause
            raise
        self.pods.upsert(created)
        log.info("pod_created", pod=spec.name, job_id=spec.job_id, attempt=spec.attempt, namespace=self._ns)

    async def delete_pod(self, name: str, *, force: bool = False, epoch: int = 0) -> None:
        # The API server cannot compare ``epoch`` with anything: the reconciler re-reads the job
        # record before asking (docs/design/dispatcher.md, "Leadership and fencing").
        assert self.pods is not None
        pod = self.pods.items.get(f"{self._ns}/{name}")
        node = pod.get("spec", {}).get("nodeName") if pod else None
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if force:
            body["gracePeriodSeconds"] = 0
        try:
            await self._retry(lambda: self._core.delete_namespaced_pod(name, self._ns, body=body,
                                                                        _preload_content=False),
                              f"delete pod {name}")
        except base.BackendError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiError) and cause.status == 404:
                return
            raise
        labels = (pod or {}).get("metadata", {}).get("labels") or {}
        log.info("pod_deleted", pod=name, node=node, force=force, job_id=labels.get(k8s_objects.LABEL_JOB),
                 attempt=labels.get(k8s_objects.LABEL_ATTEMPT), epoch=epoch,
                 reason="node_lost" if force else "requested")

    async def read_log(self, name: str, *, node: str | None, offset: int = 0,
                       limit: int = 64 * 1024) -> base.LogRead:
        """The pods/log subresource (the API server asks the pod's kubelet). ``limitBytes`` counts
        from the start of the log, so bytes up to ``offset + limit`` are read and the rest sliced
        off. The log lives as long as the pod: 404 (pod gone) and 400 (container not started,
        or no log) are LogUnavailable."""
        assert self.pods is not None
        try:
            resp: aiohttp.ClientResponse = await self._core.read_namespaced_pod_log(
                name, self._ns, container=k8s_objects.CONTAINER, limit_bytes=offset + limit,
                _preload_content=False)
            async with resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise base.BackendUnavailable(f"log of {name}: cannot reach the API server: {exc!r}") from exc
        if not 200 <= resp.status < 300:
            try:
                message = str(json.loads(body).get("message", ""))
            except ValueError:
                message = body[:300].decode(errors="replace")
            cause = ApiError(resp.status, message)
            if resp.status in (400, 404):
                raise base.LogUnavailable(f"log of pod {name}: {message or resp.status}") from cause
            raise base.BackendError(f"log of pod {name}: {cause}") from cause
        data = body[offset:offset + limit]
        pod = self.pods.items.get(f"{self._ns}/{name}")
        phase = ((pod or {}).get("status") or {}).get("phase")
        return base.LogRead(data=data, next_offset=offset + len(data),
                            running=phase not in ("Succeeded", "Failed"))
