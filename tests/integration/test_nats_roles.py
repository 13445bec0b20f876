"""Least-privilege NATS users on the real nats-server of a real stack (broker/natsauth).

Each role tries what it must not do, and the outcome is judged from what the server stored or
delivered, read by the operator, never from the role's own view: a forged record is not stored,
a forged heartbeat or node status reaches no subscriber, a stolen reply never arrives. Every
check has a control in the same run (the same act by a role allowed to do it does have the
effect), so a check that could not fail would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from broker import contract
from broker.embedded.stack import Stack
from broker.natsauth import tokens
from submitter.client import JobNotFound
from tests.conftest import running_stack, submitter_client
from tests.integration.helpers import wait_running

pytestmark = pytest.mark.timeout(240)

QUIET_S = 1.0
"""How long a refused message is given to show up anyway (it would arrive in milliseconds)."""
ARRIVES_S = 15.0
"""How long an allowed message may take on a loaded machine (the check returns once it is seen)."""


class Role:
    """One connection as one role, keeping the permission errors the server sent it."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in self.errors)


@contextlib.asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[Role]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url, error_cb=on_error, max_reconnect_attempts=0, allow_reconnect=False, **options
    )
    try:
        yield Role(nc, errors)
    finally:
        await nc.close()


def tls(stack: Stack) -> dict[str, Any]:
    """The stack's TLS options without any credentials."""
    return {k: v for k, v in stack.nats_options().items() if k == "tls"}


def token_key(stack: Stack) -> bytes:
    assert stack.auth is not None
    return stack.auth.callout_keys.token_key


async def arrives(observer: NATS, sender: Role, subject: str, *, wait_s: float = QUIET_S) -> bool:
    """Whether a message ``sender`` publishes on ``subject`` reaches a subscriber there (the
    operator's). The message is unique, so the real traffic on the subject does not count."""
    marker = json.dumps({"forged": uuid.uuid4().hex}).encode()
    sub = await observer.subscribe(subject)
    await observer.flush()
    with contextlib.suppress(nats.errors.Error):
        await sender.nc.publish(subject, marker)
        await sender.nc.flush()
    deadline = asyncio.get_running_loop().time() + wait_s
    found = False
    with contextlib.suppress(nats.errors.TimeoutError):
        while not found and asyncio.get_running_loop().time() < deadline:
            found = (await sub.next_msg(timeout=wait_s)).data == marker
    await sub.unsubscribe()
    return found


async def record_revision(operator: NATS, job_id: str) -> int:
    entry = await (await operator.jetstream().key_value(contract.BUCKET_JOBS)).get(job_id)
    assert entry.revision is not None
    return entry.revision


async def kv_write(nc: NATS, bucket: str, key: str, value: bytes) -> None:
    kv = await nc.jetstream(timeout=2).key_value(bucket)
    await kv.put(key, value)


async def test_each_role_is_refused_outside_its_rights(tmp_path: Any) -> None:
    async with running_stack(tmp_path, nodes=1) as stack, submitter_client(stack) as client:
        assert stack.nc is not None
        operator = stack.nc
        url = stack.nats_url
        job = await client.submit(task="demo.sleep", args={"seconds": 20})
        (running,) = await wait_running(client, [job.id], count=1, timeout=60)
        assert running.current is not None and running.current.node == "node-1"
        number = running.current.number
        status_1 = contract.node_status_subject("node-1")
        beat = contract.heartbeat_subject(job.id, number)

        # --- without credentials, or with a forged token: no connection at all ---------------
        for options in (
            {},
            {"token": "jobq1:node:node-1:forged"},
            {"token": tokens.node_token(b"another installation's key", "node-1")},
            {"user": "jobq-submitter", "password": "guess"},
        ):
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats.connect(
                    url, max_reconnect_attempts=0, allow_reconnect=False, **options, **tls(stack)
                )

        # --- a submitting service ------------------------------------------------------------
        async with connect(url, **stack.nats_options("submitter")) as submitter:
            before = await record_revision(operator, job.id)
            with pytest.raises(nats.errors.TimeoutError):
                await kv_write(submitter.nc, contract.BUCKET_JOBS, job.id, b'{"forged": true}')
            assert await record_revision(operator, job.id) == before
            with pytest.raises(nats.errors.TimeoutError):
                await kv_write(submitter.nc, contract.BUCKET_LEADER, contract.LEADER_LEASE_KEY, b"me")
            with pytest.raises(nats.errors.TimeoutError):
                await kv_write(
                    submitter.nc, contract.BUCKET_RESULTS, contract.result_key(job.id, number), b"{}"
                )
            with pytest.raises(nats.errors.TimeoutError):
                await kv_write(
                    submitter.nc, contract.BUCKET_PROGRESS, contract.progress_key(job.id, number), b"{}"
                )
            # It reads progress (the SDK's `progress`), as stored by the job's own pod.
            watched = await (await submitter.nc.jetstream().key_value(contract.BUCKET_PROGRESS)).watch(
                contract.progress_key(job.id, number)
            )
            reported = await watched.updates(timeout=ARRIVES_S)
            while reported is None:  # the watch's end-of-initial-values marker, before any report
                reported = await watched.updates(timeout=ARRIVES_S)
            assert contract.AttemptProgress.model_validate_json(reported.value or b"").attempt == number
            await watched.stop()
            assert not await arrives(operator, submitter, status_1)
            assert not await arrives(operator, submitter, beat)
            assert submitter.refused(status_1) and submitter.refused(beat)
            # No consumer of the submission stream: it could take jobs away from the dispatcher.
            with pytest.raises(nats.errors.TimeoutError):
                await submitter.nc.request(
                    f"$JS.API.CONSUMER.MSG.NEXT.{contract.STREAM_SUBMIT}.{contract.CONSUMER_DISPATCHER}",
                    b'{"batch": 1}',
                    timeout=1,
                )
            with pytest.raises(nats.errors.TimeoutError):
                await submitter.nc.jetstream(timeout=1).delete_stream(contract.STREAM_SUBMIT)
            assert (await operator.jetstream().stream_info(contract.STREAM_SUBMIT)).config.name
            # It cannot listen to a node's pod requests either.
            snoop = await submitter.nc.subscribe(contract.node_create_subject("node-1"))
            await submitter.nc.flush()
            await asyncio.sleep(QUIET_S)
            assert submitter.refused(contract.node_create_subject("node-1"))
            await snoop.unsubscribe()
            # What it may do, it does: cancel through the dispatcher (which writes the record).
            assert (await client.cancel(job.id)).cancel_requested

        # --- a node agent: its own node's subjects only ---------------------------------------
        key = token_key(stack)
        async with connect(url, token=tokens.node_token(key, "node-2"), **tls(stack)) as node_2:
            assert not await arrives(operator, node_2, status_1)
            assert not await arrives(operator, node_2, beat)
            assert await arrives(operator, node_2, contract.node_status_subject("node-2"), wait_s=ARRIVES_S)
            sub = await node_2.nc.subscribe(contract.node_create_subject("node-1"))
            await node_2.nc.flush()
            await asyncio.sleep(QUIET_S)
            assert node_2.refused(contract.node_create_subject("node-1"))
            await sub.unsubscribe()
            with pytest.raises(nats.errors.Error):
                await node_2.nc.jetstream(timeout=1).publish(contract.submit_subject("default"), b"{}")

        # --- a task pod: its own attempt's heartbeat and result -------------------------------
        other = contract.heartbeat_subject(job.id, number + 1)
        own_result = contract.result_key("pod-job", 1)
        async with connect(
            url,
            token=tokens.pod_token(key, "pod-job", 1),
            inbox_prefix=contract.pod_inbox_prefix("pod-job", 1),
            **tls(stack),
        ) as pod:
            own_beat = contract.heartbeat_subject("pod-job", 1)
            assert await arrives(operator, pod, own_beat, wait_s=ARRIVES_S)
            assert not await arrives(operator, pod, beat)
            assert not await arrives(operator, pod, other)
            assert not await arrives(operator, pod, status_1)
            await kv_write(pod.nc, contract.BUCKET_RESULTS, own_result, b"{}")
            await kv_write(pod.nc, contract.BUCKET_PROGRESS, contract.progress_key("pod-job", 1), b"{}")
            with pytest.raises(nats.errors.TimeoutError):  # another attempt's progress, of its own job
                await kv_write(pod.nc, contract.BUCKET_PROGRESS, contract.progress_key("pod-job", 2), b"{}")
            with pytest.raises(nats.errors.TimeoutError):  # the running job's current attempt's
                await kv_write(pod.nc, contract.BUCKET_PROGRESS, contract.progress_key(job.id, number), b"{}")
            with pytest.raises(nats.errors.TimeoutError):
                await kv_write(
                    pod.nc, contract.BUCKET_RESULTS, contract.result_key(job.id, number + 1), b"{}"
                )
            with pytest.raises(nats.errors.TimeoutError):
                await kv_write(pod.nc, contract.BUCKET_JOBS, job.id, b'{"forged": true}')
            # Replies to others never reach it: only its own inbox.
            snoop = await pod.nc.subscribe("_INBOX.>")
            await pod.nc.flush()
            await asyncio.sleep(QUIET_S)
            assert pod.refused("_INBOX.>")
            await snoop.unsubscribe()
        results = await operator.jetstream().key_value(contract.BUCKET_RESULTS)
        assert (await results.get(own_result)).value == b"{}"
        kept = await operator.jetstream().key_value(contract.BUCKET_PROGRESS)
        assert (await kept.get(contract.progress_key("pod-job", 1))).value == b"{}"
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kept.get(contract.progress_key("pod-job", 2))
        assert (await kept.get(contract.progress_key(job.id, number))).value != b"{}"
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await results.get(contract.result_key(job.id, number + 1))

        # --- the dispatcher: never the evidence it judges others by ---------------------------
        async with connect(url, **stack.nats_options("dispatcher")) as dispatcher:
            assert not await arrives(operator, dispatcher, status_1)
            assert not await arrives(operator, dispatcher, beat)

        # --- controls: the operator's same acts do have the effect the checks look for ----------
        async with connect(url, **stack.nats_options("operator")) as control:
            assert await arrives(operator, control, beat, wait_s=ARRIVES_S)
            assert await arrives(operator, control, status_1, wait_s=ARRIVES_S)
            await kv_write(
                control.nc, contract.BUCKET_RESULTS, contract.result_key(job.id, number + 1), b"{}"
            )
        assert (await results.get(contract.result_key(job.id, number + 1))).value == b"{}"

        record = await client.wait([job.id], timeout=60)
        assert record[job.id].phase == contract.JobPhase.CANCELLED


async def test_the_demo_job_mix_runs_with_every_process_on_its_own_user(tmp_path: Any) -> None:
    """Task pods with artifacts (train, then predict reading the model), a cancel and a re-drive,
    on the default stack: users on, and no process given any credentials but its own."""
    async with running_stack(tmp_path, nodes=2) as stack, submitter_client(stack) as client:
        assert stack.auth is not None
        state = json.loads((stack.config.data_dir / "stack.json").read_text())
        assert set(state["nats_auth"]) == {"submitter", "operator"}  # never the dispatcher's
        trained = await client.submit(task="sklearn.train", args={"dataset": "iris", "model": "logreg"})
        await trained.result(timeout=120)
        predicted = await client.submit(
            task="sklearn.predict", args={"model_job": trained.id, "dataset": "iris"}
        )
        assert (await predicted.result(timeout=120)).output["accuracy"] > 0.8
        assert await client.artifact(trained.id, "model.pkl")
        doomed = await client.submit(task="demo.exit", args={"code": 1}, retry={"max_attempts": 1})
        (dead,) = (await client.wait([doomed.id], timeout=90)).values()
        assert dead.phase == contract.JobPhase.DEAD
        # Hostile bytes on the request subjects get an error reply; the dispatcher keeps serving.
        for op in ("cancel", "retry"):
            for body in (b"", b"\xff\xfe", b'{"job_id": "../../etc"}', b"[" * 10000, b'{"job_id": 1}'):
                reply = await client.nc.request(contract.job_request_subject(op), body, timeout=10)
                assert contract.JobRequestReply.model_validate_json(reply.data).error.startswith(
                    f"invalid {op}"
                )
        assert (await client.retry_dead(doomed.id)).phase != contract.JobPhase.DEAD
        with pytest.raises(JobNotFound):
            await client.cancel("no-such-job")
