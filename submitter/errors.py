"""The SDK's errors (``submitter.client`` re-exports them): one tree under ``JobqError``."""

from __future__ import annotations

from collections.abc import Iterable

from broker import contract


class JobqError(Exception):
    """Base of the SDK's errors."""


class JobFailed(JobqError):
    """The job ended without a result (dead or cancelled); ``record`` says why."""

    def __init__(self, record: contract.JobRecord) -> None:
        super().__init__(f"job {record.spec.id} ended {record.phase}: {record.reason} {record.message}")
        self.record = record


class JobNotFound(JobqError):
    """No job has that id (never submitted, or not accepted yet)."""


class ArtifactNotFound(JobqError, LookupError):
    """The job has no accepted result (not finished, dead or cancelled), or its accepted attempt
    stored no artifact of that name."""


class OutputRejected(JobqError):
    """A stored result or artifact of the job's accepted attempt was not written by that
    attempt's pod (its writer stamp differs from the one the dispatcher accepted)."""


class InvalidJob(JobqError, ValueError):
    """The job cannot be submitted as it is (too big, for one)."""


class WaitTimeout(JobqError, TimeoutError):
    """``wait()`` gave up before the jobs finished; they go on. ``pending``: their ids."""

    def __init__(self, message: str, *, pending: Iterable[str]) -> None:
        super().__init__(message)
        self.pending = tuple(sorted(pending))


class DispatcherUnavailable(JobqError):
    """No dispatcher answered a request (none running, or it did not answer in time)."""


class LogUnavailable(JobqError):
    """An attempt's output cannot be read: not yet (its pod has not started; ``finished`` False)
    or no more (its pod or node is gone). ``tail`` holds the last lines jobq kept of a failed
    attempt, minus what ``logs()`` had already yielded."""

    def __init__(self, message: str, *, job_id: str, attempt: int | None, tail: str = "",
                 finished: bool = True) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.attempt = attempt
        self.tail = tail
        self.finished = finished
