"""A task pod's NATS permissions and checkpoints (broker/natsauth/permissions.py), on the real
nats-server of a stack with a NATS user per role: a pod does everything the checkpoint protocol
needs for its own job and cannot change another job's pointer. Judged by what the operator reads
back from NATS.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import nats.errors
import pytest
from nats.js import api
from structlog.testing import capture_logs

from broker import contract
from broker.natsauth import tokens
from tests.conftest import running_stack
from tests.integration.test_checkpoints import checkpointer, stored_objects, stored_pointer, writer
from tests.integration.test_nats_roles import Role, connect, kv_write, tls, token_key

pytestmark = pytest.mark.timeout(240)


async def test_a_pod_may_change_its_own_jobs_pointer_only(tmp_path: Path) -> None:
    job = "ck-perm"
    async with running_stack(tmp_path, nodes=0) as stack:
        assert stack.nc is not None
        operator, url, key = stack.nc, stack.nats_url, token_key(stack)

        def pod(job_id: str, attempt: int) -> contextlib.AbstractAsyncContextManager[Role]:
            return connect(url, token=tokens.pod_token(key, job_id, attempt),
                           inbox_prefix=contract.pod_inbox_prefix(job_id, attempt), **tls(stack))

        async with pod(job, 1) as own:  # everything the protocol needs is allowed
            first = checkpointer(own.nc, job, 1)
            assert await first.restore() is None
            await first.checkpoint(b"mine", step=1)
            await first.checkpoint(b"mine again", step=2)
            assert not own.errors
        before = await stored_pointer(operator, job)
        assert before is not None and (before.owner, before.step) == (1, 2)

        subject = f"$KV.{contract.BUCKET_CHECKPOINTS}.{job}"
        async with pod("ck-other", 1) as other:
            forged = before.model_copy(update=dict(owner=99)).model_dump_json().encode()
            with pytest.raises(nats.errors.TimeoutError):
                await kv_write(other.nc, contract.BUCKET_CHECKPOINTS, job, forged)
            # The protocol itself as another job's pod: it reads, but its claim never lands. A
            # short budget: the refused write shows as a timeout, which retry would outlast for 30 s.
            intruder = checkpointer(other.nc, job, 99, deadline_s=1)
            with pytest.raises(nats.errors.TimeoutError):
                await intruder.restore()
            assert other.refused(subject)
            # Object names cannot be scoped: it can replace the bytes the pointer names (its purge
            # of the old chunks is refused, but the new meta is stored).
            store = await other.nc.jetstream(timeout=2).object_store(contract.OBJECT_STORE_ARTIFACTS)
            with contextlib.suppress(nats.errors.Error):
                await store.put(before.object, b"planted", meta=api.ObjectMeta(
                    headers=writer(job, 1).object_headers()))
        assert (await stored_objects(operator, job))[before.object] == b"planted"
        assert await stored_pointer(operator, job) == before

        async with pod(job, 2) as replacement:
            with capture_logs() as logs:
                assert await checkpointer(replacement.nc, job, 2).restore() is None  # not the planted bytes
            assert [e["reason"] for e in logs if e["event"] == "checkpoint_rejected"] == ["digest_mismatch"]
        after = await stored_pointer(operator, job)
        assert after is not None and (after.owner, after.step) == (2, None)
