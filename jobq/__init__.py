"""jobq's public Python API, importable from the light client (``pip install jobq``, no extras).

    from jobq import JobqClient          # asyncio: async with JobqClient(url) as client: ...
    from jobq import SyncJobqClient      # blocking, thread-safe: with SyncJobqClient(url) as client: ...

Thin re-exports only: the SDK lives in ``submitter/`` (``client``, ``sync_client``, ``handles``,
``errors``), the types it returns in ``broker/contract/``. Importing this package loads nats-py,
pydantic and jobq's contract, nothing of the server side (``tests/unit/test_light_imports.py``).
"""

from broker.contract import (
    Attempt,
    AttemptCheckpoints,
    AttemptState,
    DeadLetter,
    EventType,
    JobEvent,
    JobPhase,
    JobRecord,
    JobSpec,
    LogChunk,
    TaskResult,
)
from submitter.client import JobqClient
from submitter.errors import (
    ArtifactNotFound,
    DispatcherUnavailable,
    InvalidJob,
    JobFailed,
    JobNotFound,
    JobqError,
    JobRefused,
    LogUnavailable,
    OutputRejected,
    WaitTimeout,
)
from submitter.handles import JobHandle
from submitter.reading import ArtifactInfo, Checkpoint, JobStatus, Progress
from submitter.specs import new_job_id
from submitter.sync_client import ClientClosed, SyncJobHandle, SyncJobqClient


def __getattr__(name: str) -> str:
    """``__version__``, the installed distribution's, read when asked for (importlib.metadata
    would be a fifth of this package's import time)."""
    if name != "__version__":
        raise AttributeError(f"module 'jobq' has no attribute {name!r}")
    from importlib import metadata

    try:
        return metadata.version("jobq")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__all__ = [
    "ArtifactInfo",
    "ArtifactNotFound",
    "Attempt",
    "AttemptCheckpoints",
    "AttemptState",
    "Checkpoint",
    "ClientClosed",
    "DeadLetter",
    "DispatcherUnavailable",
    "EventType",
    "InvalidJob",
    "JobEvent",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobPhase",
    "JobRecord",
    "JobRefused",
    "JobSpec",
    "JobStatus",
    "JobqClient",
    "JobqError",
    "LogChunk",
    "LogUnavailable",
    "OutputRejected",
    "Progress",
    "SyncJobHandle",
    "SyncJobqClient",
    "TaskResult",
    "WaitTimeout",
    "__version__",
    "new_job_id",
]
