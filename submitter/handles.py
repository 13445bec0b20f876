"""A submitted job's handle: its status, progress and checkpoint, waiting for it, its accepted result."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker import contract

if TYPE_CHECKING:
    from submitter.client import JobqClient
    from submitter.reading import Checkpoint


class JobHandle:
    def __init__(self, client: JobqClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    async def status(self) -> contract.JobRecord | None:
        return await self.client.get(self.id)

    async def progress(self) -> contract.AttemptProgress | None:
        """What the job's current attempt last reported (``JobqClient.progress``)."""
        return await self.client.progress(self.id)

    async def checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint of the job's running attempt (``JobqClient.checkpoint``)."""
        return await self.client.checkpoint(self.id)

    async def wait(self, *, timeout: float | None = None) -> contract.JobRecord:
        records = await self.client.wait([self.id], timeout=timeout)
        return records[self.id]

    async def result(self, *, timeout: float | None = None) -> contract.TaskResult:
        record = await self.wait(timeout=timeout)
        return await self.client.result_of(record)
