"""One reconcile pass for one job: read desired and observed state, decide, apply.

Apply order is the fence: the dead-letter record (idempotent by msg id) first, then the job
record by compare-and-set (an attempt it ends stamped with its checkpoints: ``checkpoints``), then
events, then garbage checkpoint objects, then pod side effects. A crash anywhere leaves a state
the next pass heals: a record that names an attempt whose pod does not exist yet gets the pod
created (idempotently, same name); a pod that no record names any more is deleted.

One decision per pass: a pod create the backend refuses is kept as an observation
(``observation.CreateOutcome``) and the job is looked at again at once; that next pass's
``decide()`` turns it into the transition (take the attempt back, or fail it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import pydantic
import structlog

from broker import contract, settings, store
from broker.backends import base
from broker.dispatcher import decide as decisions
from broker.dispatcher import node_health, placement, pod_spec
from broker.dispatcher.action import Action
from broker.dispatcher.checkpoints import Checkpoints
from broker.dispatcher.index import JobIndex
from broker.dispatcher.limits import Limits
from broker.dispatcher.observation import CreateFailure, CreateOutcome, Observed
from broker.dispatcher.waiting_room import WaitingRoom

log = structlog.get_logger("jobq.dispatcher")

Clock = Callable[[], dt.datetime]


@dataclasses.dataclass(slots=True)
class Heartbeats:
    """Latest heartbeat per (job, attempt), stamped with *our* receive time (no clock skew), and
    the same beats grouped by node (``nodes``) to tell a node whose attempts all fell silent."""

    silence_s: float = settings.DispatcherSettings().node_silence_s
    """Heartbeats missing this long make an attempt silent (several beat intervals)."""
    listening_since: dt.datetime = dataclasses.field(default_factory=contract.utcnow)
    seen: dict[tuple[str, int], contract.AttemptHeartbeat] = dataclasses.field(default_factory=dict)
    received: dict[tuple[str, int], dt.datetime] = dataclasses.field(default_factory=dict)
    nodes: node_health.NodeHeartbeats = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.nodes = node_health.NodeHeartbeats(silence_s=self.silence_s)

    def record(self, beat: contract.AttemptHeartbeat, *, now: dt.datetime, node: str | None = None) -> None:
        key = (beat.job_id, beat.attempt)
        self.seen[key] = beat
        self.received[key] = now
        if node:
            self.nodes.record(node, beat.job_id, beat.attempt)

    def last(self, job_id: str, attempt: int) -> dt.datetime | None:
        return self.received.get((job_id, attempt))

    def beating(self, job_id: str, attempt: int, *, now: dt.datetime) -> bool:
        """The attempt itself beat within ``silence_s``: it runs and reaches NATS."""
        last = self.last(job_id, attempt)
        return last is not None and (now - last).total_seconds() <= self.silence_s

    def forget(self, job_id: str, attempt: int | None = None) -> None:
        for key in [k for k in self.received if k[0] == job_id and (attempt is None or k[1] == attempt)]:
            self.received.pop(key, None)
            self.seen.pop(key, None)
        self.nodes.forget(job_id, attempt)


class Observer:
    """Hooks for metrics; the default does nothing."""

    def transition(self, before: contract.JobRecord, after: contract.JobRecord,
                   action: Action) -> None:
        pass

    def unschedulable(self, job_id: str) -> None:
        pass

    def pod_created(self, record: contract.JobRecord, spec: contract.PodSpec) -> None:
        """The backend accepted the pod of ``spec.attempt`` (may repeat for the same attempt)."""

    def expired(self, record: contract.JobRecord) -> None:
        """The retention sweeper deleted this finished job (its outputs, then its record)."""

    def checkpointed(self, record: contract.JobRecord, count: int) -> None:
        """The leader saw the job's pointer move on by ``count`` new checkpoints."""


class Fence(Protocol):
    """What lets a pass act: the leader's lease (``broker.dispatcher.lease.Lease``)."""

    def check(self, seen_epoch: int = 0) -> int:
        """Our epoch if we may act now; raises LeaseLost (having stepped down) when our validity
        ran out or ``seen_epoch`` is higher than ours."""
        ...


class Unfenced:
    """No lease (unit tests driving a Reconciler alone): epoch 0, always allowed."""

    def check(self, seen_epoch: int = 0) -> int:
        return 0


class Reconciler:
    def __init__(self, *, store: store.Store, backend: base.ClusterBackend, index: JobIndex,
                 heartbeats: Heartbeats, limits: Limits, queue_limits: dict[str, int],
                 observer: Observer | None = None, clock: Clock = contract.utcnow,
                 rng: random.Random | None = None, wake: Callable[[str], None] | None = None,
                 fence: Fence | None = None) -> None:
        self._fence: Fence = fence or Unfenced()
        self._store = store
        self._backend = backend
        self._index = index
        self._heartbeats = heartbeats
        self._limits = limits
        self._queue_limits = queue_limits
        self._observer = observer or Observer()
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = wake or (lambda _job_id: None)
        self.waiting = WaitingRoom(wake=self._wake)
        """Queued jobs that cannot start now, each woken by the change that can release it."""
        index.subscribe(self.waiting.changed)
        self.checkpoints = Checkpoints(st=store, backend=backend, heartbeats=heartbeats, index=index,
                                       counter=self._observer)
        self._create_outcomes: dict[str, tuple[int, CreateOutcome]] = {}
        """Job -> the backend's refusal of its pod, with the record revision the create was made
        at: an observation for the next pass while the record stays at that revision."""

    async def reconcile(self, job_id: str) -> float | None:
        """One pass; returns seconds until the job wants another look (None: only on events)."""
        started = time.perf_counter()
        reconcile_id = uuid.uuid4().hex[:8]
        got = await self._store.get(job_id)
        if got is None:
            return None
        record, revision = got
        self._index.put(record, revision)
        pods = tuple(await self._backend.list_pods(job_id=job_id))
        seen = await self._observe(record, pods, create_outcome=self._create_outcome(job_id, revision))
        action = decisions.decide(record, seen, now=self._clock(), rng=self._rng, limits=self._limits)
        action = await self.checkpoints.stamp(record, action)  # an attempt ends: what it checkpointed
        if action.record is not None:  # the record moves on: the outcome was acted on, or is moot
            self._create_outcomes.pop(job_id, None)
        lost = frozenset(p.name for p in seen.pods if not p.node_ready)
        requeue = await self._apply(record, revision, action, force_delete=lost)
        grace = self._beat_grace_left(job_id, pods, seen.pods)
        if grace is not None and (requeue is None or grace < requeue):
            requeue = grace
        self.waiting.track(action.record or record, action, timed=requeue is not None)
        current = (action.record or record).current
        if action.summary not in ("noop", "watching", "backoff") and (
                action.record is not None or not action.summary.startswith("waiting")):
            log.info("job_reconciled", job_id=job_id, reconcile_id=reconcile_id,
                     action=action.summary, phase=(action.record or record).phase,
                     attempt=current.number if current else None,
                     node=current.node if current else None,
                     reason=action.record.reason if action.record else None,
                     requeue_after_s=requeue,
                     duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return requeue

    def _beat_grace_left(self, job_id: str, pods: tuple[base.PodState, ...],
                         judged: tuple[base.PodState, ...]) -> float | None:
        """Seconds until a pod whose node the backend calls lost stops being kept by its own
        heartbeats (node_health rule 1), if any is: the pass that can judge it lost must come
        then, not at the next routine look (docs/design/node-loss.md)."""
        kept = {p.name for p in judged if p.node_ready}
        left = [
            self._heartbeats.silence_s - (self._clock() - last).total_seconds()
            for p in pods
            if not p.node_ready and p.name in kept
            and (last := self._heartbeats.last(job_id, p.attempt)) is not None
        ]
        return max(0.05, min(left) + 0.05) if left else None

    def _create_outcome(self, job_id: str, revision: int) -> CreateOutcome | None:
        """The refusal of this job's last pod create, if the record is still as it was then."""
        kept = self._create_outcomes.get(job_id)
        if kept is None:
            return None
        if kept[0] != revision:  # someone moved the record on since: the next pass looks afresh
            del self._create_outcomes[job_id]
            return None
        return kept[1]

    async def _placement(self, record: contract.JobRecord,
                         suspects: frozenset[str]) -> tuple[placement.Placement, frozenset[str]]:
        """Where a queued job stands, and the Ready nodes (for the anti-affinity it gets)."""
        nodes = await self._backend.list_nodes()
        ready = frozenset(n.name for n in nodes if n.ready)
        avoid = pod_spec.effective_avoid(record, ready, suspects)
        verdict = placement.judge(pod_spec.requests(record.spec, self._limits), nodes, avoid=avoid,
                                  cluster_waits=self._backend.cluster_waits)
        if verdict.fit == placement.Fit.NOW and self.waiting.blocked(record):
            verdict = placement.Placement(placement.Fit.LATER,
                                          "waiting behind a higher-priority job that waits for capacity")
        return verdict, ready

    def _judge_node(self, record: contract.JobRecord, pod: base.PodState, now: dt.datetime) -> base.PodState:
        """The pod with ``node_ready`` set to jobq's verdict, which combines the backend's view
        (Lease, Ready condition) with the attempts' heartbeats (docs/design/node-loss.md)."""
        nodes = self._heartbeats.nodes
        why = node_health.node_lost(
            node=pod.node,
            backend_ready=pod.node_ready,
            backend_why=pod.node_why,
            evidence=nodes.evidence(pod.node),
            beating=self._heartbeats.beating(record.spec.id, pod.attempt, now=now),
            task=record.spec.task is not None,
            silent_for=nodes.silent_for(pod.node) if pod.node else 0.0,
        )
        return dataclasses.replace(pod, node_ready=why is None, node_why=why or "")

    async def _observe(
        self, record: contract.JobRecord, pods: tuple[base.PodState, ...], *,
        create_outcome: CreateOutcome | None = None,
    ) -> Observed:
        now = self._clock()
        pods = tuple(self._judge_node(record, p, now) for p in pods)
        current = record.current
        result_exists = False
        result_writer = None
        last_heartbeat = None
        node_lost_why = ""
        if current is not None:
            last_heartbeat = self._heartbeats.last(record.spec.id, current.number)
            pod = next((p for p in pods if p.name == current.pod), None)
            if pod is not None and record.spec.task and not record.phase.is_terminal:
                node_lost_why = "" if pod.node_ready else pod.node_why
                silent = last_heartbeat is not None and not self._heartbeats.beating(
                    record.spec.id, current.number, now=now)
                # A result settles it: look one up when the pod says it succeeded, or when the
                # attempt would otherwise be judged lost (its node could not report the exit).
                # It counts only when the attempt's own pod wrote it (its writer stamp names the
                # pod, and the pod's uid when the backend reports one): anything else under the
                # key (a forged or stray write, another pod of that name) is treated as absent.
                if pod.phase == contract.PodPhase.SUCCEEDED or (
                        pod.phase != contract.PodPhase.FAILED and (silent or not pod.node_ready)):
                    try:
                        result = await self._store.get_result(record.spec.id, current.number)
                        problem = result.acceptance_problem(current, pod_uid=pod.uid) if result else ""
                    except pydantic.ValidationError as exc:
                        result, problem = None, f"it is unreadable: {exc.error_count()} validation error(s)"
                    if problem:
                        log.warning("result_rejected", job_id=record.spec.id, attempt=current.number,
                                    node=pod.node, pod=pod.name, pod_uid=pod.uid, reason=problem,
                                    key=contract.result_key(record.spec.id, current.number))
                    elif result is not None:
                        result_exists, result_writer = True, result.writer
        limit = self._queue_limits.get(record.spec.queue)
        queue_full = (record.phase == contract.JobPhase.QUEUED and limit is not None
                      and self._index.running_in(record.spec.queue) >= limit)
        ready_nodes = None
        suspects = self._heartbeats.nodes.suspects()
        verdict = None
        if (record.phase == contract.JobPhase.QUEUED and not record.cancel_requested and not queue_full
                and (record.not_before is None or record.not_before <= now)):
            verdict, ready_nodes = await self._placement(record, suspects)
        elif record.avoid_nodes and not record.phase.is_terminal:
            ready_nodes = frozenset(n.name for n in await self._backend.list_nodes() if n.ready)
        return Observed(pods=pods, last_heartbeat=last_heartbeat, result_exists=result_exists,
                        result_writer=result_writer,
                        queue_full=queue_full, ready_nodes=ready_nodes, node_lost_why=node_lost_why,
                        listening_since=self._heartbeats.listening_since,
                        suspect_nodes=suspects, placement=verdict, create_outcome=create_outcome)

    async def _apply(self, record: contract.JobRecord, revision: int,
                     action: Action, *, force_delete: frozenset[str] = frozenset()) -> float | None:
        """Carry out ``action``, fenced: every side effect first checks the lease (``Fence.check``
        raises LeaseLost when we may no longer act) and carries our epoch; the record is written
        with our epoch before anything else we do for the job, so an older leader's later
        compare-and-set on it fails, and a record a newer leader wrote stops us."""
        job_id = record.spec.id
        epoch = self._fence.check(record.epoch)
        if action.dead_letter is not None:
            self._fence.check()
            await self._store.publish_dead_letter(
                action.dead_letter, msg_id=f"dead-{job_id}-{len(record.attempts)}")
        written = action.record
        if written is None and record.epoch < epoch:
            written = record  # first pass of this leadership on the job: stamp our epoch on it
        if written is not None:
            stamped = written.model_copy(update={"epoch": epoch})
            self._fence.check()
            try:
                revision = await self._store.update(stamped, revision=revision)
            except store.Conflict:
                log.info("job_conflict", job_id=job_id)
                return 0.0
            self._index.put(stamped, revision)
            if action.record is not None:
                self._observer.transition(record, stamped, action)
            record = stamped

        # "attempt_created" is said once its pod exists: a create the backend turns down is taken
        # back by the next pass and was never an attempt anyone saw.
        created = contract.EventType.ATTEMPT_CREATED
        await self._publish([e for e in action.events if action.create is None or e.type != created])
        if action.drop_checkpoints:
            self._fence.check()
            await self.checkpoints.collect(job_id, action.drop_checkpoints)
        if action.delete and not await self._delete(record, revision, action.delete, force_delete):
            return 0.0
        if action.create is not None:
            announce = [e for e in action.events if e.type == created]
            if not await self._create(record, revision, action.create, announce):
                return 0.0  # the next pass decides what the refusal means
        return action.requeue_after

    async def _delete(self, record: contract.JobRecord, revision: int, names: tuple[str, ...],
                      force_delete: frozenset[str]) -> bool:
        """Delete pods the decision on ``record`` (at ``revision``) named, after reading the record
        again: a pod goes only while the record is still at that revision, or when it is not the
        pod of the stored record's live current attempt. False: something was skipped (the record
        moved on meanwhile), so the caller requeues the job for a fresh decision."""
        got = await self._store.get(record.spec.id)
        fresh, fresh_revision = got if got is not None else (None, None)
        if fresh is not None:
            self._fence.check(fresh.epoch)
        current = fresh.current if fresh is not None else None
        complete = True
        for name in names:
            live = (fresh_revision != revision and current is not None and current.pod == name
                    and not current.state.is_final)
            if live:
                log.warning("pod_delete_skipped", job_id=record.spec.id, pod=name, revision=revision,
                            stored_revision=fresh_revision, reason="record changed since the decision")
                complete = False
                continue
            epoch = self._fence.check()
            await self._backend.delete_pod(name, force=name in force_delete, epoch=epoch)
        return complete

    async def _publish(self, events: list[contract.JobEvent]) -> None:
        for event in events:
            epoch = self._fence.check()
            try:
                await self._store.publish_event(event.model_copy(update={"epoch": epoch}))
            except Exception as exc:  # events are an audit trail; the record is the truth
                log.error("event_lost", job_id=event.job_id, type=event.type, error=repr(exc))

    async def _create(self, record: contract.JobRecord, revision: int, spec: contract.PodSpec,
                      announce: list[contract.JobEvent]) -> bool:
        """Create the pod of ``spec``; False if the backend refused it. A refusal is not acted on
        here: it is kept as an observation for the next pass (``_create_outcome``)."""
        job_id = record.spec.id
        spec = spec.model_copy(update={"epoch": self._fence.check()})
        try:
            await self._backend.create_pod(spec)
        except base.Unschedulable as exc:
            refused = CreateOutcome(CreateFailure.UNSCHEDULABLE, attempt=spec.attempt, message=str(exc))
            self._observer.unschedulable(job_id)
            log.debug("pod_unschedulable", job_id=job_id, attempt=spec.attempt, error=str(exc))
        except base.PlacementUncertain as exc:
            refused = CreateOutcome(CreateFailure.UNCERTAIN, attempt=spec.attempt, message=str(exc),
                                    node=exc.node)
        except base.PodRejected as exc:
            refused = CreateOutcome(CreateFailure.REJECTED, attempt=spec.attempt, message=str(exc))
        else:
            await self._publish(announce)
            self.waiting.created(job_id)
            self._observer.pod_created(record, spec)
            return True
        self._create_outcomes[job_id] = (revision, refused)
        if refused.failure != CreateFailure.UNSCHEDULABLE:
            await self._publish(announce)  # it may run there, or the backend saw it: it was an attempt
        return False
