"""The SDK's reads: job records with their progress and checkpoints, accepted results and
artifacts, events and dead letters (``JobqClient`` inherits them; submitting, waiting and asking
live in ``client``).

A job's outputs are read from its accepted attempt only, through ``broker.readmodel.outputs``,
the same checks the HTTP API makes; its progress is its current attempt's only
(``broker.readmodel.progress``), and so is its live checkpoint (``broker.readmodel.checkpoints``).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext

from broker import contract
from broker.readmodel import checkpoints as checkpoints_read
from broker.readmodel import deadletters, outputs
from broker.readmodel import events as event_log
from broker.readmodel import progress as progress_read
from broker.readmodel import records as records_read
from submitter.errors import ArtifactNotFound, JobFailed, JobNotFound, OutputRejected

Progress = contract.AttemptProgress
"""An attempt's latest progress: ``job_id``, ``attempt``, ``fraction`` (0..1), ``message``, ``at``."""
Checkpoint = checkpoints_read.LiveCheckpoint
"""The running attempt's checkpoints so far: ``job_id``, ``attempt``, ``written``, ``step``, ``at``
(of the newest), ``resumed_step``, ``resumed_from_attempt``. An ended attempt's are on its record
(``Attempt.checkpoints``, with ``Attempt.work_lost_s`` when it was disrupted)."""
ArtifactInfo = outputs.ArtifactInfo
"""One artifact of a job's accepted attempt: ``name``, ``attempt``, ``sha256``, ``size``, ``problem``."""

_FINAL_EVENTS = frozenset(
    {contract.EventType.SUCCEEDED, contract.EventType.DEAD, contract.EventType.CANCELLED}
)


@dataclasses.dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's record, its current attempt's latest progress (None before any report) and, while
    that attempt runs, its live checkpoint (None until it restores or writes one)."""

    record: contract.JobRecord
    progress: Progress | None
    checkpoint: Checkpoint | None = None

    @property
    def phase(self) -> contract.JobPhase:
        return self.record.phase


class Reading:
    """Read-only calls of the SDK; the class using it provides ``js``."""

    @property
    def js(self) -> JetStreamContext:
        raise NotImplementedError

    async def _jobs(self) -> Any:  # nats-py's KV watcher is untyped
        return await self.js.key_value(contract.BUCKET_JOBS)

    async def get(self, job_id: str) -> contract.JobRecord | None:
        try:
            entry = await (await self._jobs()).get(job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.BucketNotFoundError):
            return None
        record = contract.JobRecord.model_validate_json(entry.value or b"{}")
        return None if record.expired else record  # its retention ran out: being deleted

    async def list(self) -> builtins.list[contract.JobRecord]:
        try:
            return await records_read.kept_records(self.js)
        except nats.js.errors.NotFoundError:  # no bucket yet: nothing was ever submitted
            return []

    async def status(self, job_id: str) -> JobStatus | None:
        """The job's record with its current attempt's progress and live checkpoint; None when
        there is no record."""
        record = await self.get(job_id)
        if record is None:
            return None
        progress, checkpoint = await asyncio.gather(
            progress_read.current(self.js, record), checkpoints_read.current(self.js, record)
        )
        return JobStatus(record=record, progress=progress, checkpoint=checkpoint)

    async def progress(self, job_id: str) -> Progress | None:
        """What the job's current attempt last reported (``ctx.progress``), stored by its pod at
        most every 2 s and once more at its end; None before the first report. What a superseded
        attempt reports is never shown. Raises JobNotFound."""
        record = await self.get(job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id}")
        return await progress_read.current(self.js, record)

    async def checkpoint(self, job_id: str) -> Checkpoint | None:
        """The newest checkpoint of the job's running attempt, from the job's live pointer: None
        until that attempt restores or writes one, and once it ended (its record's
        ``Attempt.checkpoints`` then says what it did). A superseded attempt's is never shown.
        Raises JobNotFound."""
        return await checkpoints_read.current(self.js, await self._record(job_id))

    async def result_of(self, record: contract.JobRecord) -> contract.TaskResult:
        """The accepted result of a finished job: the one its record's ``result_attempt`` names,
        written by that attempt's pod. Raises JobFailed (no accepted result) or OutputRejected."""
        try:
            return await outputs.accepted_result(self.js, record)
        except outputs.NotAccepted:
            raise JobFailed(record) from None
        except outputs.Expired as exc:
            raise JobNotFound(str(exc)) from None
        except outputs.OutputRejected as exc:
            raise OutputRejected(str(exc)) from None

    async def artifacts(self, job_id: str) -> builtins.list[ArtifactInfo]:
        """The artifacts of the job's accepted attempt (name, attempt, sha256, size; ``problem``
        says why one would not be handed out). Does not wait: raises JobNotFound,
        ArtifactNotFound (no accepted result yet or at all) or OutputRejected."""
        record = await self._record(job_id)
        try:
            return await outputs.artifacts(self.js, record)
        except outputs.NotAccepted as exc:
            raise ArtifactNotFound(str(exc)) from None
        except outputs.Expired as exc:
            raise JobNotFound(str(exc)) from None
        except outputs.OutputRejected as exc:
            raise OutputRejected(str(exc)) from None

    async def artifact(self, job_id: str, name: str) -> bytes:
        """Artifact ``name`` of the job's accepted attempt (``contract.artifact_key(job_id,
        result_attempt, name)``), written by the same pod as its accepted result and with the
        bytes that result lists. Does not wait: raises JobNotFound, ArtifactNotFound (no accepted
        result yet or at all, or no such artifact) or OutputRejected (another pod's object)."""
        record = await self._record(job_id)
        try:
            return await outputs.artifact(self.js, record, name)
        except (outputs.NotAccepted, outputs.OutputMissing) as exc:
            raise ArtifactNotFound(str(exc)) from None
        except outputs.Expired as exc:
            raise JobNotFound(str(exc)) from None
        except outputs.OutputRejected as exc:
            raise OutputRejected(str(exc)) from None

    async def _record(self, job_id: str) -> contract.JobRecord:
        record = await self.get(job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id}")
        return record

    async def events(
        self, job_id: str, *, settled: bool = False, timeout: float = 10.0
    ) -> builtins.list[contract.JobEvent]:
        """Every event recorded for the job, oldest first.

        The dispatcher writes a job's record before it publishes the events of that transition,
        so right after ``wait()`` the last event may still be on its way: ``settled=True`` waits
        (up to ``timeout`` seconds) until the events include the job's final one.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            events = await event_log.job_events(self.js, job_id, limit=None)
            if not settled or any(e.type in _FINAL_EVENTS for e in events):
                return events
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"job {job_id} has no final event after {timeout}s")
            await asyncio.sleep(0.1)

    async def dead_letters(self, *, limit: int = 100) -> builtins.list[tuple[int, contract.DeadLetter]]:
        """Newest dead-letter records first, with their stream sequence."""
        found, _ = await deadletters.newest(self.js, limit=limit)
        return [(item.seq, item.letter) for item in found]

    async def dead_letter(self, seq: int) -> contract.DeadLetter | None:
        """The dead letter stored under ``seq`` in stream JOBQ_DEAD, if any."""
        return await deadletters.get(self.js, seq)

    async def dead_letter_original(self, letter: contract.DeadLetter) -> bytes | None:
        """The whole original message a dead letter is about: its inline ``payload`` when it has
        one, else the copy in object store ``jobq_dead``; None when the letter names none or the
        copy expired (with the letter's stream, after 30 days)."""
        return await deadletters.original(self.js, letter)
