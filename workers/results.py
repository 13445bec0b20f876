"""The worker's thin JetStream layer: the attempt's result (KV) and artifacts (object store).

Buckets are created by the broker; when one is missing (a runner started on its own, in tests)
it is created here with the same essentials (results: history 1).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from broker import contract
from workers import tasks

log = structlog.get_logger("workers.results")

_T = TypeVar("_T")
_TRANSIENT = (nats.errors.TimeoutError, nats.errors.NoRespondersError,
              nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
              nats.errors.ConnectionReconnectingError, asyncio.TimeoutError)
"""Errors worth retrying: a reconnect or a JetStream leader election in progress."""
_ARTIFACT_NAME = re.compile(r"^[-_=.a-zA-Z0-9]+(/[-_=.a-zA-Z0-9]+)*$")


class ResultNotWritten(RuntimeError):
    """JetStream did not accept the result before the deadline."""


def jsonable(output: object) -> dict[str, Any]:
    """``output`` as strict JSON would carry it; TypeError/ValueError if it cannot be."""
    if not isinstance(output, dict):
        raise TypeError(f"a task must return a dict, not {type(output).__name__}")
    try:
        parsed: dict[str, Any] = json.loads(json.dumps(output, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the task's output is not JSON-serialisable: {exc}") from exc
    return parsed


async def write_result(js: JetStreamContext, result: contract.TaskResult, *,
                       deadline_s: float = 30.0) -> int:
    """Put ``result`` under ``result_key(job_id, attempt)``; return the KV revision."""
    key = contract.result_key(result.job_id, result.attempt)
    payload = result.model_dump_json().encode()

    async def put() -> int:
        kv = await _results_bucket(js)
        return await kv.put(key, payload)

    try:
        return await _retrying(put, deadline_s=deadline_s, what="result_put")
    except _TRANSIENT as exc:
        raise ResultNotWritten(f"could not write result {key}: {exc!r}") from exc


class ArtifactStore:
    """Whole-object reads and writes in ``contract.OBJECT_STORE_ARTIFACTS``."""

    def __init__(self, js: JetStreamContext, *, deadline_s: float = 60.0) -> None:
        self._js = js
        self._deadline_s = deadline_s
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def put(self, name: str, data: bytes) -> None:
        check_artifact_name(name)

        async def put() -> None:
            store = await self._open()
            await store.put(name, data)

        await _retrying(put, deadline_s=self._deadline_s, what="artifact_put")

    async def get(self, name: str) -> bytes:
        check_artifact_name(name)

        async def get() -> bytes:
            store = await self._open()
            return (await store.get(name)).data or b""

        try:
            return await _retrying(get, deadline_s=self._deadline_s, what="artifact_get")
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError) as exc:
            raise tasks.ArtifactNotFound(
                f"no artifact {name!r} in {contract.OBJECT_STORE_ARTIFACTS}") from exc

    async def _open(self) -> ObjectStore:
        async with self._lock:
            if self._store is None:
                try:
                    self._store = await self._js.object_store(contract.OBJECT_STORE_ARTIFACTS)
                except nats.js.errors.BucketNotFoundError:
                    self._store = await self._js.create_object_store(contract.OBJECT_STORE_ARTIFACTS)
            return self._store


def check_artifact_name(name: str) -> None:
    if not _ARTIFACT_NAME.match(name) or ".." in name.split("/"):
        raise ValueError(f"artifact name {name!r} must be path segments of letters, digits, -_=.")


async def _results_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(contract.BUCKET_RESULTS)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(bucket=contract.BUCKET_RESULTS, history=1)


async def _retrying(operation: Callable[[], Awaitable[_T]], *, deadline_s: float, what: str) -> _T:
    """Run ``operation``, retrying transient failures with capped backoff until the deadline."""
    deadline = time.monotonic() + deadline_s
    delay = 0.25
    while True:
        try:
            return await operation()
        except _TRANSIENT as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("nats_retrying", operation=what, error=repr(exc), retry_in_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
