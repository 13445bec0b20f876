"""The pod of an attempt: its command, environment, image, resource requests and the nodes it
must avoid. Pure, no I/O."""

from __future__ import annotations

import json

from broker import contract
from broker.dispatcher.limits import Limits
from broker.natsauth import tokens


def effective_avoid(
    job: contract.JobRecord, ready_nodes: frozenset[str] | None, suspects: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """Nodes the next attempt must avoid: those that lost this job, unless they are all the
    Ready nodes there are (then waiting would be forever; a node that is Ready again is used),
    and the nodes jobq currently judges lost (``suspects``), which the cluster may still call Ready."""
    own = () if ready_nodes and ready_nodes <= set(job.avoid_nodes) else job.avoid_nodes
    return (*own, *sorted(suspects - set(own)))


def requests(spec: contract.JobSpec, limits: Limits) -> contract.Resources:
    """The job's resources, or its profile's (``spec.profile_name``: its own, else its built-in
    task's, else ``small``) as the operator overrides it."""
    if spec.resources is not None:
        return spec.resources
    return limits.profiles.get(spec.profile_name) or spec.requests


def env(job: contract.JobRecord, attempt: contract.Attempt, limits: Limits) -> dict[str, str]:
    """The worker's environment: the operator's extra variables, then jobq's own keys."""
    spec = job.spec
    values = {k: v for k, v in limits.extra_env if k not in (contract.ENV_ARGS, contract.ENV_ARGS_FROM)}
    values.update(
        {
            contract.ENV_JOB_ID: spec.id,
            contract.ENV_ATTEMPT: str(attempt.number),
            contract.ENV_QUEUE: spec.queue,
            contract.ENV_POD: attempt.pod,  # the writer identity the worker stamps on its outputs
        }
    )
    if limits.nats_url:
        values[contract.ENV_NATS_URL] = limits.nats_url
    if limits.pod_token_key is not None:  # the pod's NATS user: its attempt's subjects only
        values[contract.ENV_NATS_TOKEN] = tokens.pod_token(limits.pod_token_key, spec.id, attempt.number)
    if limits.nats_ca:
        values[contract.ENV_NATS_CA] = limits.nats_ca
    if spec.task is not None:
        values[contract.ENV_TASK] = spec.task
        args = json.dumps(spec.args, separators=(",", ":"), sort_keys=True)  # ASCII: 1 byte a char
        if len(args) <= contract.MAX_INLINE_ARGS_BYTES:
            values[contract.ENV_ARGS] = args
        else:  # too big for one environment string: the runner reads them from the job record
            values[contract.ENV_ARGS_FROM] = contract.ARGS_FROM_RECORD
    return values


def build(
    job: contract.JobRecord,
    attempt: contract.Attempt,
    limits: Limits,
    *,
    ready_nodes: frozenset[str] | None = None,
    suspects: frozenset[str] = frozenset(),
) -> contract.PodSpec:
    """The pod spec of ``attempt`` of ``job``."""
    spec = job.spec
    command: tuple[str, ...] = ("jobq-runner",) if spec.task is not None else (spec.command or ())
    return contract.PodSpec(
        name=attempt.pod,
        job_id=spec.id,
        attempt=attempt.number,
        queue=spec.queue,
        command=command,
        env=env(job, attempt, limits),
        image=spec.image or limits.image,
        resources=requests(spec, limits),
        avoid_nodes=effective_avoid(job, ready_nodes, suspects),
    )
