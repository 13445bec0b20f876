"""Building a submission: a job's id, its validated JobSpec, and the bytes published for it."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from broker import contract
from submitter.errors import InvalidJob


def payload(job: contract.JobSpec) -> bytes:
    """The submission as published: the spec without its defaults."""
    return job.model_dump_json(exclude_defaults=True).encode()


def new_job_id(idempotency_key: str | None = None) -> str:
    """A fresh id, or one derived from the idempotency key (same key, same id)."""
    if idempotency_key is not None:
        return "k-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
    return "j-" + uuid.uuid4().hex[:20]


def build_spec(spec: contract.JobSpec | dict[str, Any] | None = None, **fields: Any) -> contract.JobSpec:
    """A validated JobSpec from a spec, a dict, or keyword fields; fills in the id. Raises
    pydantic's ValidationError, or InvalidJob when it is bigger than MAX_SUBMISSION_BYTES."""
    if isinstance(spec, contract.JobSpec):
        job = spec
    else:
        data = {**(spec or {}), **fields}
        data.setdefault("id", new_job_id(data.get("idempotency_key")))
        job = contract.JobSpec.model_validate(data)
    # As published and as the dispatcher stores it (with every default): both must fit.
    size = max(len(payload(job)), len(job.model_dump_json().encode()))
    if size > contract.MAX_SUBMISSION_BYTES:
        raise InvalidJob(
            f"job {job.id} is {size} bytes; the limit is {contract.MAX_SUBMISSION_BYTES} (a job is "
            "one NATS message): put big inputs in the object store"
        )
    return job
