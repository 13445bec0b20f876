"""Fenced leadership (docs/design/dispatcher.md, "Leadership and fencing").

- The reconciler carries its leader epoch on every side effect, acts on nothing once its lease is
  invalid, stops at a record a newer epoch wrote, and re-reads the record before deleting a pod
  (a real NATS store, the fake backend).
- The embedded node agent refuses creates and deletes from an epoch older than one it has seen.
- A leader paused (SIGSTOP) beyond its TTL while jobs flow, on the embedded stack with two
  dispatchers: the standby takes over; after SIGCONT the old leader steps down. Evidence from
  outside the old leader (the node agents' request logs, the job records as watched in KV, the
  events as stored in JetStream, all stamped by the server or the agents) shows that nothing of
  an older epoch happened after the takeover, and the independent checker (tests/checker.py)
  finds every job finished exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from broker import contract, policy, store
from broker.backends import k8s_objects
from broker.backends.fake import FakeBackend
from broker.backends.local import LocalBackend
from broker.dispatcher import reconcile
from broker.dispatcher.action import Action
from broker.dispatcher.index import JobIndex
from broker.dispatcher.lease import LEASE_KEY, LeaseLost
from broker.dispatcher.limits import Limits
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests import checker
from tests.conftest import FAST_ENV, running_stack, submitter_client
from workers.node_agent import AgentSettings, NodeAgent

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


# --- the reconciler's fence (real store, fake backend) -------------------------------------------


class StubFence:
    """A lease stand-in: epoch ``epoch``, valid while ``valid``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.valid = True

    def check(self, seen_epoch: int = 0) -> int:
        if not self.valid:
            raise LeaseLost("lease validity ran out")
        if seen_epoch > self.epoch:
            raise LeaseLost(f"superseded: epoch {seen_epoch}")
        return self.epoch


@dataclasses.dataclass
class Harness:
    st: store.Store
    backend: FakeBackend
    fence: StubFence
    reconciler: reconcile.Reconciler
    client: JobqClient

    async def submit(self, job_id: str, *, epoch: int = 0) -> int:
        record = contract.JobRecord(
            spec=contract.JobSpec(id=job_id, command=("true",)), submitted_at=NOW, updated_at=NOW, epoch=epoch
        )
        revision = await self.st.create(record)
        assert revision is not None
        return revision

    async def stored(self, job_id: str) -> tuple[contract.JobRecord, int]:
        got = await self.st.get(job_id)
        assert got is not None
        return got


@contextlib.asynccontextmanager
async def harness(nc: NATS, nats_server: NatsServer, *, epoch: int) -> AsyncIterator[Harness]:
    st = await store.Store.open(nc)
    backend = FakeBackend()
    fence = StubFence(epoch)
    rec = reconcile.Reconciler(
        store=st,
        backend=backend,
        index=JobIndex(),
        heartbeats=reconcile.Heartbeats(),
        limits=Limits(queue_policy=policy.QueuePolicy({"*": policy.OPEN})),  # command jobs
        queue_limits={},
        fence=fence,
    )
    async with JobqClient(nats_server.url) as client:
        yield Harness(st, backend, fence, rec, client)


async def test_every_side_effect_of_a_pass_carries_the_leader_epoch(
    nc: NATS, nats_server: NatsServer
) -> None:
    async with harness(nc, nats_server, epoch=7) as h:
        await h.submit("f1")
        await h.reconciler.reconcile("f1")
        record, revision = await h.stored("f1")
        assert record.epoch == 7 and record.current is not None
        pod = record.current.pod
        assert h.backend.specs[pod].epoch == 7
        events = await h.client.events("f1")
        assert events and {e.epoch for e in events} == {7}, events

        # A newer leader's first pass stamps its epoch even when it has nothing else to write:
        # from then on the old leader's compare-and-set on this record fails.
        h.backend.set_phase(pod, contract.PodPhase.RUNNING)
        for _ in range(5):  # until a pass at epoch 7 has nothing to write
            await h.reconciler.reconcile("f1")
            settled = await h.stored("f1")
            if settled[1] == revision:
                break
            record, revision = settled
        assert record.current is not None and record.current.state == contract.AttemptState.RUNNING
        h.fence.epoch = 9
        await h.reconciler.reconcile("f1")
        again, after = await h.stored("f1")
        assert again.epoch == 9 and after > revision
        assert again.model_copy(update={"epoch": 7}) == record
        with pytest.raises(store.Conflict):
            await h.st.update(record.model_copy(update={"message": "late write"}), revision=revision)


async def test_an_invalid_lease_acts_on_nothing(nc: NATS, nats_server: NatsServer) -> None:
    async with harness(nc, nats_server, epoch=7) as h:
        revision = await h.submit("f2")
        h.fence.valid = False
        with pytest.raises(LeaseLost):
            await h.reconciler.reconcile("f2")
        record, after = await h.stored("f2")
        assert (after, record.epoch, record.attempts) == (revision, 0, ())
        assert h.backend.created == [] and await h.client.events("f2") == []


async def test_a_record_written_by_a_newer_epoch_stops_the_pass(nc: NATS, nats_server: NatsServer) -> None:
    async with harness(nc, nats_server, epoch=7) as h:
        revision = await h.submit("f3", epoch=8)
        with pytest.raises(LeaseLost, match="superseded"):
            await h.reconciler.reconcile("f3")
        record, after = await h.stored("f3")
        assert (after, record.epoch, record.attempts) == (revision, 8, ())
        assert h.backend.created == []


async def test_a_pod_is_deleted_only_while_the_record_is_as_decided(
    nc: NATS, nats_server: NatsServer
) -> None:
    async with harness(nc, nats_server, epoch=7) as h:
        await h.submit("f4")
        await h.reconciler.reconcile("f4")
        decided_on, revision = await h.stored("f4")
        assert decided_on.current is not None
        pod = decided_on.current.pod
        # Someone writes the record after our decision (another pass, a cancel); attempt 1 is
        # still the live current attempt there, so our delete of its pod is skipped and requeued.
        await h.st.update(decided_on.model_copy(update={"message": "changed"}), revision=revision)
        kill = Action(delete=(pod,), summary="test-delete", requeue_after=30.0)
        assert await h.reconciler._apply(decided_on, revision, kill) == 0.0
        assert pod in h.backend.pods
        # Decided on the stored revision: the pod goes.
        fresh, fresh_revision = await h.stored("f4")
        assert await h.reconciler._apply(fresh, fresh_revision, kill) == 30.0
        assert pod not in h.backend.pods


def test_a_kubernetes_pod_carries_its_epoch_as_an_annotation() -> None:
    spec = contract.PodSpec(
        name="job-k-1", job_id="k", attempt=1, queue="default", command=("true",), epoch=12
    )
    pod = k8s_objects.pod_manifest(spec, namespace="jobs", image="jobq:test")
    assert pod["metadata"]["annotations"][k8s_objects.ANNOTATION_EPOCH] == "12"


# --- the node agent's fence ------------------------------------------------------------------------


async def test_the_node_agent_refuses_requests_from_an_older_epoch(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = AgentSettings(
        name="fence-node",
        capacity=contract.Resources(cpu=2, memory="1Gi"),
        work_dir=tmp_path / "nodes",
        nats_url=nats_server.url,
    )
    stop = asyncio.Event()
    agent = NodeAgent(nc, settings)
    running = asyncio.create_task(agent.run(stop))

    def spec(name: str, epoch: int) -> contract.PodSpec:
        return contract.PodSpec(
            name=name,
            job_id=name,
            attempt=1,
            queue="default",
            command=("sleep", "30"),
            resources=contract.Resources(cpu=0.1, memory="64Mi"),
            epoch=epoch,
        )

    async def create(name: str, epoch: int) -> contract.NodeReply:
        reply = await nc.request(
            contract.node_create_subject(settings.name),
            spec(name, epoch).model_dump_json().encode(),
            timeout=5,
        )
        return contract.NodeReply.model_validate_json(reply.data)

    async def delete(name: str, epoch: int) -> contract.NodeReply:
        reply = await nc.request(
            contract.node_delete_subject(settings.name),
            name.encode(),
            timeout=5,
            headers={contract.HEADER_EPOCH: str(epoch)},
        )
        return contract.NodeReply.model_validate_json(reply.data)

    try:
        while True:  # subscribed once it has announced itself
            with contextlib.suppress(nats.errors.NoRespondersError):
                assert (await create("p-a", 5)).ok
                break
            await asyncio.sleep(0.05)
        refused = await create("p-b", 4)
        assert not refused.ok and "stale leader epoch 4 < 5" in refused.error
        assert not (await delete("p-a", 4)).ok
        assert {p.name: p.phase for p in agent.status().pods} == {"p-a": contract.PodPhase.RUNNING}
        # Through the backend too: LocalBackend sends its epoch with the delete.
        async with LocalBackend(nc, node_timeout_s=3) as backend:
            while not await backend.list_pods(job_id="p-a"):
                await asyncio.sleep(0.05)
            await backend.delete_pod("p-a", epoch=3)
            assert [p.name for p in agent.status().pods] == ["p-a"]
            await backend.delete_pod("p-a", epoch=6)
            assert agent.status().pods == ()
        assert not (await create("p-c", 5)).ok, "epoch 6 was seen: 5 is stale now"
        assert (await create("p-c", 6)).ok
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


# --- a leader paused beyond its TTL ----------------------------------------------------------------

TTL_S = float(FAST_ENV["JOBQ_LEASE_TTL_S"])


def server_time(meta_ts: Any) -> dt.datetime:
    """A JetStream message timestamp (nats-py gives a datetime) as an aware UTC datetime."""
    if isinstance(meta_ts, dt.datetime):
        return meta_ts if meta_ts.tzinfo else meta_ts.replace(tzinfo=dt.UTC)
    raise TypeError(f"unexpected timestamp {meta_ts!r}")


@dataclasses.dataclass(frozen=True)
class Seen:
    at: dt.datetime
    """Server (JetStream) or node-agent time."""
    epoch: int
    what: str


class KVFollower:
    """Every update of a KV bucket as the server stored it (value, revision, server time)."""

    def __init__(self, client: JobqClient, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self.entries: list[tuple[str, bytes, int, dt.datetime]] = []
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        kv = await self.client.js.key_value(self.bucket)
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    self.ready.set()
                    continue
                if entry.value and entry.revision is not None:
                    self.entries.append((entry.key, entry.value, entry.revision, server_time(entry.created)))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> KVFollower:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def stored_events(client: JobqClient, job_ids: set[str]) -> list[tuple[contract.JobEvent, dt.datetime]]:
    """Every event of these jobs in stream JOBQ_EVENTS, with the time the server stored it."""
    sub = await client.js.subscribe(
        contract.EVENTS_WILDCARD, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
    )
    found: list[tuple[contract.JobEvent, dt.datetime]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=3)
            except nats.errors.TimeoutError:
                break
            event = contract.JobEvent.model_validate_json(msg.data)
            if event.job_id in job_ids:
                found.append((event, server_time(msg.metadata.timestamp)))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if isinstance(line, dict):
                lines.append(line)
    return lines


def log_time(line: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00"))


def node_requests(stack: Stack) -> list[Seen]:
    """Every create/delete request the node agents received (accepted or refused), with its epoch."""
    seen = []
    for name in stack.nodes:
        for line in log_lines(stack.logs / f"{name}.log"):
            if line.get("event") in ("pod_request", "pod_request_refused"):
                seen.append(
                    Seen(
                        log_time(line),
                        int(line["epoch"]),
                        f"{name} {line['event']} {line.get('op')} {line.get('pod')}",
                    )
                )
    return seen


async def leader_index(stack: Stack, client: JobqClient) -> tuple[int, str]:
    kv = await client.js.key_value(contract.BUCKET_LEADER)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            holder = ((await kv.get(LEASE_KEY)).value or b"").decode()
            for index, process in stack.dispatchers.items():
                if holder.endswith(f"-{process.pid}"):
                    return index, holder
        assert time.monotonic() < deadline, "no dispatcher of the stack holds the lease"
        await asyncio.sleep(0.1)


async def readyz(stack: Stack, index: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{stack.http_ports[index]}/readyz", timeout=aiohttp.ClientTimeout(total=5)
        ) as r,
    ):
        body: dict[str, Any] = await r.json()
        return body


@pytest.mark.timeout(420)
async def test_a_leader_paused_beyond_its_ttl_acts_no_more_after_the_takeover(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    specs = checker.witness_specs(24, ledger, seconds=(1.0, 2.0, 3.0), prefix="pause")
    acked: dict[str, int] = {}
    async with (
        running_stack(tmp_path, dispatchers=2, nodes=3) as stack,
        submitter_client(stack, name="fencing-test") as client,
        KVFollower(client, contract.BUCKET_LEADER) as leases,
        KVFollower(client, contract.BUCKET_JOBS) as records,
    ):
        acked |= await checker.submit_witnessed(client, specs[:8])
        while sum(1 for ln in checker.read_ledger(ledger)[0] if ln.event == "start") < 3:
            await asyncio.sleep(0.1)
        old_index, old_holder = await leader_index(stack, client)
        stack.signal_dispatcher(old_index, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            acked |= await checker.submit_witnessed(client, specs[8:16])  # while the leader is frozen
            while not any(v.decode() != old_holder for _, v, _, _ in leases.entries):
                assert time.monotonic() - stopped < 60, "the standby never took over"
                await asyncio.sleep(0.05)
            takeover_seen = time.monotonic() - stopped
            # Leave the old leader frozen well past its TTL, while the new leader works.
            await asyncio.sleep(TTL_S)
        finally:
            resumed_at = dt.datetime.now(dt.UTC)
            stack.signal_dispatcher(old_index, signal.SIGCONT)
            paused_s = time.monotonic() - stopped
        acked |= await checker.submit_witnessed(client, specs[16:])
        report = await checker.check(client, acked=acked, ledger=ledger, timeout_s=240)
        print(f"checker: {report.summary()}")
        assert report.defects == 0, report.describe()
        assert report.jobs == len(specs)

        new_index, new_holder = await leader_index(stack, client)
        assert new_index != old_index and new_holder != old_holder

        # The takeover as the server stored it: the new holder's first key write (its epoch).
        new_key = next((rev, at) for _, v, rev, at in leases.entries if v.decode() == new_holder)
        new_epoch, takeover_at = new_key
        old_key = [at for _, v, _, at in leases.entries if v.decode() == old_holder]
        assert old_key and max(old_key) < takeover_at
        last_renewal_to_takeover = (takeover_at - max(old_key)).total_seconds()
        assert last_renewal_to_takeover >= TTL_S * 0.9, "the key expired before its TTL"

        # Evidence from outside the old leader: what the node agents received, the records as
        # stored, the events as stored. Nothing of an older epoch after the takeover.
        requests = node_requests(stack)
        record_writes = [
            Seen(at, contract.JobRecord.model_validate_json(v).epoch, f"record {k} rev {rev}")
            for k, v, rev, at in records.entries
            if k in acked
        ]
        events = [
            Seen(at, e.epoch, f"event {e.job_id} {e.type}")
            for e, at in await stored_events(client, set(acked))
        ]
        late = [s for s in [*requests, *record_writes, *events] if s.at > takeover_at and s.epoch < new_epoch]
        assert late == [], late[:10]
        refused = [s for s in requests if "refused" in s.what]
        assert refused == [], refused[:10]
        # The evidence is there to be judged: every side effect is stamped, both epochs appear.
        assert all(s.epoch > 0 for s in [*requests, *events]), "an unstamped request or event"
        old_epochs = {s.epoch for s in [*requests, *record_writes, *events] if s.at < takeover_at}
        assert old_epochs and max(old_epochs) < new_epoch
        assert any(s.epoch == new_epoch for s in requests) and any(s.epoch == new_epoch for s in events)
        # A record's epoch never goes back.
        by_job: dict[str, list[tuple[int, int]]] = {}
        for k, v, rev, _ in records.entries:
            by_job.setdefault(k, []).append((rev, contract.JobRecord.model_validate_json(v).epoch))
        for job_id, history in by_job.items():
            epochs = [epoch for _, epoch in sorted(history)]
            assert epochs == sorted(epochs), (job_id, epochs)

        # The old dispatcher lives on, as a standby.
        assert stack.dispatchers[old_index].returncode is None
        assert (await readyz(stack, old_index))["leader"] is False

        # What the old leader itself says (figures only): when it stepped down after waking.
        old_log = log_lines(stack.logs / f"dispatcher-{old_index}.log")
        step_down = [
            ln for ln in old_log if ln.get("event") == "lease_step_down" and log_time(ln) >= resumed_at
        ]
        fenced = [ln for ln in old_log if ln.get("event") in ("reconcile_fenced", "submission_released")]
        assert step_down, "the old leader never noticed it had lost its authority"
        woke_to_step_down = (log_time(step_down[0]) - resumed_at).total_seconds()
        print(
            f"paused {paused_s:.2f}s (TTL {TTL_S:g}s); takeover seen {takeover_seen:.2f}s after SIGSTOP, "
            f"{last_renewal_to_takeover:.2f}s after the old leader's last stored renewal; "
            f"old epoch(s) {sorted(old_epochs)} -> new epoch {new_epoch}; old leader stepped down "
            f"{woke_to_step_down:.3f}s after SIGCONT ({step_down[0].get('reason')}); passes fenced on "
            f"waking {len(fenced)}; node requests {len(requests)}, record writes {len(record_writes)}, "
            f"events {len(events)}; late old-epoch effects {len(late)}"
        )
