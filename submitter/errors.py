"""The SDK's errors (``submitter.client`` re-exports them): one tree under ``JobqError``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from broker import contract


class JobqError(Exception):
    """Base of the SDK's errors."""


class JobFailed(JobqError):
    """The job ended without a result (dead or cancelled); ``record`` says why."""

    def __init__(self, record: contract.JobRecord) -> None:
        super().__init__(f"job {record.spec.id} ended {record.phase}: {record.reason} {record.message}")
        self.record = record


class JobRefused(JobqError):
    """The dispatcher's intake refused the job: it got a dead letter (reason ``refused``, the
    queue's operator policy JOBQ_QUEUE_POLICY; or ``invalid``) and no record, so it never runs.
    The message is the letter's; ``letter`` is the DeadLetter, ``seq`` its sequence in stream
    JOBQ_DEAD (None if not found). Raised by ``wait()``, where ``done`` holds the records of the
    other waited jobs that had finished and ``pending`` the ids of those that had not (they go
    on); and by ``refusal()`` callers such as ``jobq status``."""

    def __init__(
        self,
        letter: contract.DeadLetter,
        *,
        seq: int | None = None,
        done: Mapping[str, contract.JobRecord] | None = None,
        pending: Iterable[str] = (),
    ) -> None:
        super().__init__(letter.message)
        self.letter = letter
        self.job_id = letter.job_id or ""
        self.seq = seq
        self.done = dict(done or {})
        self.pending = tuple(sorted(pending))

    def describe(self) -> str:
        """One line: ``job X was refused: <why> (dead letter SEQ)``."""
        where = f" (dead letter {self.seq})" if self.seq is not None else ""
        reason = self.letter.reason
        how = "refused" if reason == contract.FailureReason.REFUSED else f"refused ({reason.value})"
        return f"job {self.job_id} was {how}: {self.letter.message}{where}"


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

    def __init__(
        self, message: str, *, job_id: str, attempt: int | None, tail: str = "", finished: bool = True
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.attempt = attempt
        self.tail = tail
        self.finished = finished
