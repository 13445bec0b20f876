"""The embedded node agent: one OS process that is one node of the local cluster.

It announces its capacity and its pods on ``jobq.node.<name>.status`` every ``interval_s`` and at
every change, runs pods it is asked to run as process groups (``workers.pod_runtime``), kills
pods that use more memory than they requested (reason ``OOMKilled``) and kills pods on request.
Finished pods stay listed until the dispatcher deletes them, like Pod objects in Kubernetes; a
failed pod's status carries the last lines of its log. Each pod gets a fresh uid (uuid4) in its
environment (``JOBQ_POD_UID``) and its status, as Kubernetes gives every Pod object one: the
worker stamps its outputs with it, and the dispatcher accepts a result only from the uid it sees
running the attempt. Pod logs are served on
``jobq.node.<name>.pods.log`` and stay readable after their pod is deleted.
SIGKILL of the agent takes its pods with it: that is a node dying. Task-runner pods are forked by
the node's fork server (``workers.fork_client``; docs/design/fork-server.md) unless
``JOBQ_FORK_SERVER=0``; memory the fork server's preloaded modules give a forked pod at birth is not
counted against its request. Pods get a scrubbed environment, a HOME of their own and, with
``JOBQ_POD_USER``, another user (``workers.pod_env``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import signal
import uuid
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from broker import contract, fit, natsutil
from workers import fork_client, pod_env, pod_runtime
from workers.agent_settings import AgentSettings as AgentSettings

log = structlog.get_logger("jobq.node")


@dataclasses.dataclass(slots=True)
class _Pod:
    spec: contract.PodSpec
    process: pod_runtime.PodProcess | None
    """None: the command could not be started (the pod is Failed with reason StartError)."""
    started_at: dt.datetime
    uid: str
    """Unique per pod this agent started (uuid4), given to the pod as contract.ENV_POD_UID."""
    phase: contract.PodPhase = contract.PodPhase.RUNNING
    exit_code: int | None = None
    reason: str = ""
    finished_at: dt.datetime | None = None
    killed_for: str = ""
    log_tail: str = ""
    inherited_bytes: int = 0
    """Resident memory a forked pod had at birth (the fork server's modules), not charged to it."""

    def status(self, node: str) -> contract.PodStatus:
        return contract.PodStatus(
            name=self.spec.name,
            job_id=self.spec.job_id,
            attempt=self.spec.attempt,
            phase=self.phase,
            node=node,
            exit_code=self.exit_code,
            reason=self.reason,
            started_at=self.started_at,
            finished_at=self.finished_at,
            pid=self.process.pid if self.process is not None else None,
            resources=self.spec.resources,
            log_tail=self.log_tail,
            uid=self.uid,
        )


def read_tail(path: Path) -> str:
    """The last lines of a log file (contract.tail_of); empty when it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - contract.LOG_TAIL_BYTES))
            return contract.tail_of(f.read())
    except OSError:
        return ""


def read_log(path: Path, *, offset: int, limit: int) -> tuple[bytes, int]:
    """Bytes ``offset`` .. ``offset + limit`` of a log file, and the offset after them."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(limit)
    return data, offset + len(data)


def pod_command(spec: contract.PodSpec, *, python: str) -> list[str]:
    """The pod's command; ``jobq-runner`` means the worker runtime of this installation."""
    if spec.command and spec.command[0] == "jobq-runner":
        return [python, "-m", "workers.runner", *spec.command[1:]]
    return list(spec.command)


class NodeAgent:
    def __init__(self, nc: NATS, settings: AgentSettings) -> None:
        self._nc = nc
        self._s = settings
        self._boot_id = uuid.uuid4().hex[:12]
        self._pods: dict[str, _Pod] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._epoch = 0
        """The highest leader epoch seen on a create or delete request (the fencing token)."""
        self._forks: fork_client.ForkServer | None = None
        self._forks_stop = asyncio.Event()
        self._forks_task: asyncio.Task[None] | None = None
        self._base_env = pod_env.node_env(os.environ, passthrough=settings.pod_env_passthrough)
        """What every pod (and the fork server) gets from the agent's environment."""

    def _allocated(self) -> tuple[float, int, int]:
        active = [p.spec.resources for p in self._pods.values() if p.finished_at is None]
        return (sum(r.cpu for r in active), sum(r.memory_bytes for r in active), sum(r.gpu for r in active))

    def status(self) -> contract.NodeStatus:
        return contract.NodeStatus(
            name=self._s.name,
            boot_id=self._boot_id,
            capacity=self._s.capacity,
            pods=tuple(p.status(self._s.name) for p in self._pods.values()),
            interval_s=self._s.interval_s,
            pid=os.getpid(),
        )

    async def _publish_status(self) -> None:
        await self._nc.publish(
            contract.node_status_subject(self._s.name), self.status().model_dump_json().encode()
        )

    async def run(self, stop: asyncio.Event) -> None:
        subs = [
            await self._nc.subscribe(contract.node_create_subject(self._s.name), cb=self._on_create),
            await self._nc.subscribe(contract.node_delete_subject(self._s.name), cb=self._on_delete),
            await self._nc.subscribe(contract.node_log_subject(self._s.name), cb=self._on_log),
        ]
        if self._s.fork_server and fork_client.become_subreaper():
            self._forks = fork_client.ForkServer(
                python=self._s.python, log_path=self._log_path(".fork-server"), node=self._s.name,
                env={**self._base_env, "HOME": str(self._s.node_dir / "home")})
            self._forks_task = asyncio.create_task(self._forks.run(self._forks_stop), name="fork-server")
        log.info(
            "node_started",
            node=self._s.name,
            boot_id=self._boot_id,
            cpu=self._s.capacity.cpu,
            memory=self._s.capacity.memory,
        )
        try:
            if self._forks is not None:  # a node announces itself once its runtime is warm
                await self._forks.warm_up(stop)
            while not stop.is_set():
                await self._publish_status()
                self._enforce_memory()
                if self._forks is not None:
                    fork_client.reap_orphans()
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_change_or(stop), self._s.interval_s)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await self.shutdown()

    async def _wait_change_or(self, stop: asyncio.Event) -> None:
        change = asyncio.ensure_future(self._changed.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({change, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            change.cancel()
            stopped.cancel()

    def _running(self) -> dict[int, _Pod]:
        """The pods whose process runs, by pid (= process group)."""
        return {
            p.process.pid: p for p in self._pods.values() if p.process is not None and p.finished_at is None
        }

    async def shutdown(self) -> None:
        """Node shutting down gracefully: its pods are evicted (killed, reported, then gone)."""
        running = list(self._running().values())
        for pod in running:
            pod.killed_for = "Evicted"
        await asyncio.gather(
            *(pod_runtime.terminate(p.process, grace_s=self._s.grace_s) for p in running if p.process),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1)
        if self._forks_task is not None:
            self._forks_stop.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._forks_task
            fork_client.become_subreaper(False)
        with contextlib.suppress(Exception):
            await self._publish_status()
            await self._nc.flush(timeout=1)
        log.info("node_stopped", node=self._s.name, evicted=len(running))

    async def _reply(self, msg: Msg, *, ok: bool, error: str = "") -> None:
        if msg.reply:
            await self._nc.publish(
                msg.reply, contract.NodeReply(ok=ok, error=error).model_dump_json().encode()
            )

    async def _on_create(self, msg: Msg) -> None:
        try:
            spec = contract.PodSpec.model_validate_json(msg.data)
        except ValidationError as exc:
            await self._reply(msg, ok=False, error=f"invalid pod spec: {exc}")
            return
        if not await self._admit_epoch(msg, "create", spec.name, spec.epoch):
            return
        async with self._lock:
            if spec.name in self._pods:
                await self._reply(msg, ok=True)
                return
            cpu, memory, gpu = self._allocated()
            cap, want = self._s.capacity, spec.resources
            if not fit.fits(want, cpu=cap.cpu - cpu, memory_bytes=cap.memory_bytes - memory,
                            gpu=cap.gpu - gpu):
                await self._reply(msg, ok=False, error=f"insufficient resources on {self._s.name}")
                return
            uid = str(uuid.uuid4())
            log_path, user = self._log_path(spec.name), self._s.pod_user
            started_at = contract.utcnow()
            try:
                env = pod_env.pod_env(
                    self._base_env, spec.env, home=pod_env.make_home(self._home(spec.name), user),
                    node_keys={contract.ENV_NODE: self._s.name, contract.ENV_POD: spec.name,
                               contract.ENV_POD_UID: uid}, default_nats_url=self._s.nats_url,
                    default_nats_ca=os.environ.get(contract.ENV_NATS_CA, ""))
                process, inherited = await fork_client.start_pod(
                    pod_command(spec, python=self._s.python), forks=self._forks, python=self._s.python,
                    env=env, log_path=log_path, user=user, pod=spec.name, job_id=spec.job_id,
                    attempt=spec.attempt, node=self._s.name)
            except OSError as exc:
                # Like a container runtime's StartError: the pod exists and failed, for good.
                self._pods[spec.name] = _Pod(
                    spec=spec, process=None, started_at=started_at, uid=uid, phase=contract.PodPhase.FAILED,
                    exit_code=contract.EXIT_START_ERROR, reason=contract.POD_REASON_START_ERROR,
                    finished_at=contract.utcnow(), log_tail=contract.tail_of(str(exc).encode()))
                log.warning("pod_start_failed", pod=spec.name, job_id=spec.job_id, attempt=spec.attempt,
                            node=self._s.name, reason=contract.POD_REASON_START_ERROR, error=str(exc))
                await self._reply(msg, ok=True)
                self._changed.set()
                return
            pod = self._pods[spec.name] = _Pod(spec=spec, process=process, started_at=started_at, uid=uid,
                                               inherited_bytes=inherited)
            task = asyncio.create_task(self._wait_pod(pod), name=f"pod-{spec.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info(
            "pod_started",
            pod=spec.name,
            job_id=spec.job_id,
            attempt=spec.attempt,
            node=self._s.name,
            pid=process.pid,
            uid=uid,
            forked=inherited > 0,
        )
        await self._reply(msg, ok=True)
        self._changed.set()

    async def _wait_pod(self, pod: _Pod) -> None:
        assert pod.process is not None
        code = pod_runtime.exit_code(await pod.process.wait())
        pod_runtime.signal_group(pod.process.pid, signal.SIGKILL)
        pod.exit_code, pod.finished_at = code, contract.utcnow()
        pod.phase = (
            contract.PodPhase.SUCCEEDED if code == 0 and not pod.killed_for else contract.PodPhase.FAILED
        )
        pod.reason = pod.killed_for or ("Completed" if code == 0 else "Error")
        if pod.phase == contract.PodPhase.FAILED:
            pod.log_tail = read_tail(self._log_path(pod.spec.name))
        log.info(
            "pod_exited",
            pod=pod.spec.name,
            job_id=pod.spec.job_id,
            attempt=pod.spec.attempt,
            node=self._s.name,
            exit_code=code,
            reason=pod.reason,
        )
        self._changed.set()

    async def _admit_epoch(self, msg: Msg, op: str, pod: str, epoch: int) -> bool:
        """Fencing: refuse a request from a leader epoch older than the newest one seen (a
        dispatcher that was superseded, acting late). Logs every request with its epoch."""
        if epoch < self._epoch:
            log.warning("pod_request_refused", op=op, pod=pod, node=self._s.name, epoch=epoch,
                        newest_epoch=self._epoch, reason="stale_epoch")
            await self._reply(msg, ok=False, error=f"stale leader epoch {epoch} < {self._epoch}")
            return False
        self._epoch = epoch
        log.info("pod_request", op=op, pod=pod, node=self._s.name, epoch=epoch)
        return True

    async def _on_delete(self, msg: Msg) -> None:
        name = msg.data.decode()
        try:
            epoch = int((msg.headers or {}).get(contract.HEADER_EPOCH, "0"))
        except ValueError:
            epoch = 0
        if not await self._admit_epoch(msg, "delete", name, epoch):
            return
        pod = self._pods.get(name)
        if pod is not None and pod.process is not None and pod.finished_at is None:
            pod.killed_for = "Killed"
            await pod_runtime.terminate(pod.process, grace_s=self._s.grace_s)
        if self._pods.pop(name, None) is not None:
            pod_env.remove_home(self._home(name))
        log.info("pod_deleted", pod=name, node=self._s.name, found=pod is not None)
        await self._reply(msg, ok=True)
        self._changed.set()

    def _log_path(self, pod: str) -> Path:
        return self._s.node_dir / f"{pod}.log"

    def _home(self, pod: str) -> Path:
        return self._s.node_dir / "home" / pod

    async def _on_log(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            request = contract.NodeLogRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            reply = contract.NodeLogReply(ok=False, error=f"invalid log request: {exc}")
        else:
            pod = self._pods.get(request.pod)
            # Whether it runs is decided before reading: a pod that had exited then wrote everything.
            running = pod is not None and pod.finished_at is None
            try:
                data, next_offset = read_log(self._log_path(request.pod), offset=request.offset,
                                             limit=request.limit)
            except FileNotFoundError:
                missing = f"node {self._s.name} has no log of {request.pod}"
                reply = contract.NodeLogReply(ok=False, error=missing)
            except OSError as exc:
                reply = contract.NodeLogReply(ok=False, error=f"cannot read the log of {request.pod}: {exc}")
            else:
                reply = contract.NodeLogReply(ok=True, data=data, next_offset=next_offset, running=running)
        await self._nc.publish(msg.reply, reply.model_dump_json().encode())

    def _enforce_memory(self) -> None:
        running = self._running()
        for pgid, rss in pod_runtime.rss_by_group(set(running)).items():
            pod = running[pgid]
            if rss - pod.inherited_bytes > pod.spec.resources.memory_bytes:
                pod.killed_for = "OOMKilled"
                pod_runtime.signal_group(pgid, signal.SIGKILL)
                log.warning(
                    "pod_oom_killed",
                    pod=pod.spec.name,
                    job_id=pod.spec.job_id,
                    attempt=pod.spec.attempt,
                    node=self._s.name,
                    rss_bytes=rss,
                    inherited_bytes=pod.inherited_bytes,
                    limit_bytes=pod.spec.resources.memory_bytes,
                )


async def run_agent(settings: AgentSettings, stop: asyncio.Event) -> None:
    """Connect to NATS and be a node until ``stop`` (graceful: pods are evicted first)."""
    nc = await natsutil.connect(settings.nats_url, name=f"jobq-node-{settings.name}")
    try:
        await NodeAgent(nc, settings).run(stop)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 5)
