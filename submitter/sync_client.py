"""The synchronous SDK, for code without an event loop (Flask, Django, scripts, thread pools):

    from jobq import SyncJobqClient

    with SyncJobqClient("nats://127.0.0.1:4222") as client:
        handle = client.submit(task="sklearn.train", args={"dataset": "digits"})
        print(handle.result(timeout=120).output["accuracy"])

Each ``SyncJobqClient`` owns one ``JobqClient`` (one NATS connection) on a private event loop in
a daemon thread (``loop_thread``); every method runs the async client's method of the same name
there and blocks until it is done. So one client may be shared by any number of threads at once,
and works from inside a thread that runs its own asyncio loop (it blocks that thread, as any
synchronous call does; async code should use ``JobqClient``). Errors are the async client's
(``submitter.errors``), raised unchanged; a closed client raises ``ClientClosed`` (a JobqError).

The constructor connects (raising what ``async with JobqClient(...)`` would); ``close()`` (or
leaving the ``with`` block) drains the connection and stops the thread.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Self

from broker import contract
from submitter.client import JobqClient
from submitter.errors import JobRefused
from submitter.loop_thread import ClientClosed, LoopThread
from submitter.reading import ArtifactInfo, Checkpoint, JobStatus

__all__ = ["ClientClosed", "SyncJobHandle", "SyncJobqClient"]


class SyncJobqClient:
    def __init__(
        self,
        url: str = contract.DEFAULT_NATS_URL,
        *,
        name: str = "jobq-client",
        auth: Mapping[str, Any] | None = None,
        nats_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Connect, as ``JobqClient(url, name=..., auth=..., nats_options=...)`` would."""
        self._client = JobqClient(url, name=name, auth=auth, nats_options=nats_options)  # on self._loop only
        self._loop = LoopThread(name=f"jobq-sync-client-{name}")
        try:
            self._loop.run(self._client.__aenter__())
        except BaseException:
            self._loop.stop()
            raise

    def close(self) -> None:
        """Drain the NATS connection and stop the thread; calls still running raise ClientClosed."""
        self._loop.stop(self._client.__aexit__(None, None, None))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self._client.url

    # --- one line each: the async client's method of the same name (see JobqClient) ----------

    def build_spec(
        self, spec: contract.JobSpec | dict[str, Any] | None = None, **fields: Any
    ) -> contract.JobSpec:
        return self._client.build_spec(spec, **fields)

    def submit(self, spec: contract.JobSpec | dict[str, Any] | None = None, **fields: Any) -> SyncJobHandle:
        return SyncJobHandle(self, self._loop.run(self._client.submit(spec, **fields)).id)

    def submit_many(self, specs: Iterable[contract.JobSpec | dict[str, Any]]) -> builtins.list[SyncJobHandle]:
        return [SyncJobHandle(self, h.id) for h in self._loop.run(self._client.submit_many(specs))]

    def get(self, job_id: str) -> contract.JobRecord | None:
        return self._loop.run(self._client.get(job_id))

    def list(self) -> builtins.list[contract.JobRecord]:
        return self._loop.run(self._client.list())

    def wait(
        self,
        job_ids: Iterable[str],
        *,
        timeout: float | None = None,
        on_update: Callable[[contract.JobRecord], None] | None = None,
    ) -> dict[str, contract.JobRecord]:
        """As JobqClient.wait; ``on_update`` runs in the client's own thread and must not call it."""
        return self._loop.run(self._client.wait(job_ids, timeout=timeout, on_update=on_update))

    def refusal(self, job_id: str) -> JobRefused | None:
        return self._loop.run(self._client.refusal(job_id))

    def result_of(self, record: contract.JobRecord) -> contract.TaskResult:
        return self._loop.run(self._client.result_of(record))

    def result(self, job_id: str, *, timeout: float | None = None) -> contract.TaskResult:
        return self._loop.run(self._client.result(job_id, timeout=timeout))

    def status(self, job_id: str) -> JobStatus | None:
        return self._loop.run(self._client.status(job_id))

    def progress(self, job_id: str) -> contract.AttemptProgress | None:
        return self._loop.run(self._client.progress(job_id))

    def checkpoint(self, job_id: str) -> Checkpoint | None:
        return self._loop.run(self._client.checkpoint(job_id))

    def artifacts(self, job_id: str) -> builtins.list[ArtifactInfo]:
        return self._loop.run(self._client.artifacts(job_id))

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._loop.run(self._client.artifact(job_id, name))

    def read_log(
        self,
        job_id: str,
        *,
        attempt: int | None = None,
        offset: int = 0,
        limit: int = 64 * 1024,
        timeout: float = 10.0,
    ) -> contract.LogChunk:
        return self._loop.run(
            self._client.read_log(job_id, attempt=attempt, offset=offset, limit=limit, timeout=timeout)
        )

    def logs(
        self, job_id: str, *, attempt: int | None = None, follow: bool = False, poll_s: float = 0.5
    ) -> Iterator[str]:
        return self._loop.iterate(self._client.logs(job_id, attempt=attempt, follow=follow, poll_s=poll_s))

    def cancel(self, job_id: str) -> contract.JobRecord:
        return self._loop.run(self._client.cancel(job_id))

    def events(
        self, job_id: str, *, settled: bool = False, timeout: float = 10.0
    ) -> builtins.list[contract.JobEvent]:
        return self._loop.run(self._client.events(job_id, settled=settled, timeout=timeout))

    def dead_letters(self, *, limit: int = 100) -> builtins.list[tuple[int, contract.DeadLetter]]:
        return self._loop.run(self._client.dead_letters(limit=limit))

    def dead_letter(self, seq: int) -> contract.DeadLetter | None:
        return self._loop.run(self._client.dead_letter(seq))

    def dead_letter_original(self, letter: contract.DeadLetter) -> bytes | None:
        return self._loop.run(self._client.dead_letter_original(letter))

    def retry_dead(self, job_id: str) -> contract.JobRecord:
        return self._loop.run(self._client.retry_dead(job_id))


class SyncJobHandle:
    """A submitted job, as ``SyncJobqClient.submit`` returns it (the blocking ``JobHandle``)."""

    def __init__(self, client: SyncJobqClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"SyncJobHandle({self.id!r})"

    def status(self) -> contract.JobRecord | None:
        return self.client.get(self.id)

    def progress(self) -> contract.AttemptProgress | None:
        return self.client.progress(self.id)

    def checkpoint(self) -> Checkpoint | None:
        return self.client.checkpoint(self.id)

    def wait(self, *, timeout: float | None = None) -> contract.JobRecord:
        return self.client.wait([self.id], timeout=timeout)[self.id]

    def result(self, *, timeout: float | None = None) -> contract.TaskResult:
        return self.client.result_of(self.wait(timeout=timeout))
