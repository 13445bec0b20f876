"""Every name that crosses a process boundary: streams, buckets, subjects, headers, the pod's
environment keys and exit codes, and the keys derived from ids. The node agent's own subjects are
in ``node_protocol``; sizes and bounds in ``limits``."""

from __future__ import annotations

import hashlib

CONTRACT_VERSION = 1

# --- streams, subjects, buckets -------------------------------------------------------------

STREAM_SUBMIT = "JOBQ_SUBMIT"
STREAM_EVENTS = "JOBQ_EVENTS"
STREAM_DEAD = "JOBQ_DEAD"
STREAM_ADVISORIES = "JOBQ_ADVISORIES"
CONSUMER_DISPATCHER = "dispatcher"
BUCKET_JOBS = "jobq_jobs"
BUCKET_RESULTS = "jobq_results"
BUCKET_LEADER = "jobq_leader"
LEADER_LEASE_KEY = "dispatcher"
"""The key in BUCKET_LEADER holding the leading dispatcher's identity, ``<host>-<pid>``."""
BUCKET_IDEMPOTENCY = "jobq_idempotency"
BUCKET_PROGRESS = "jobq_progress"
"""Each attempt's latest progress (``AttemptProgress``) under ``progress_key(job, attempt)``,
written by the attempt's own pod when it changes (docs/design/progress.md)."""
PROGRESS_MAX_AGE_S = 7 * 86400
"""How long a progress value is kept after its last write (the bucket's ``max_age``, as long as
the events of stream JOBQ_EVENTS): a task silent for longer shows no progress."""
MAX_PROGRESS_MESSAGE_CHARS = 512
"""A progress message longer than this is cut by the runner, and refused by every reader."""
PROGRESS_MAX_VALUE_BYTES = 4096
"""The largest value nats-server accepts in bucket ``jobq_progress`` (a pod that bypasses the
runner cannot fill it with more)."""
OBJECT_STORE_ARTIFACTS = "jobq_artifacts"
OBJECT_STORE_DEAD = "jobq_dead"
"""The whole original of each dead letter (the letter itself carries a bounded excerpt)."""

SUBMIT_PREFIX = "jobq.submit."
SUBMIT_WILDCARD = "jobq.submit.>"
EVENTS_WILDCARD = "jobq.events.>"
DEAD_WILDCARD = "jobq.dead.>"
HEARTBEAT_WILDCARD = "jobq.attempt.*.*.hb"
JOB_REQUEST_WILDCARD = "jobq.jobs.>"
"""Request/reply to the dispatchers about one job (``job_request_subject``): a submitter may ask,
only a dispatcher writes the record."""
LOGS_SUBJECT = "jobq.logs"
"""Request/reply (LogRequest -> LogChunk), served by every dispatcher replica."""

HEADER_MSG_ID = "Nats-Msg-Id"
"""JetStream de-duplication header; set it to the job's idempotency key (or its id)."""
HEADER_CONTRACT = "Jobq-Contract"
"""Optional: the contract version the publisher was written against."""
HEADER_EPOCH = "Jobq-Epoch"
"""The leader epoch (fencing token) of the dispatcher that sent a node agent's delete request."""
ARTIFACT_WRITER_HEADER = "Jobq-Writer"
"""Header of an artifact's object-store metadata: its Writer as JSON (the value is a one-element
list, as NATS object-store headers are in every client)."""

CONTROL_SUBJECT = "jobq.stack.control"
"""Request/reply to the embedded stack's supervisor (chaos rollbacks): JSON {"op": "state" |
"start_node" | "start_dispatcher" | "start_nats", "name"/"index": ...} -> {"ok": bool, "error": str, ...}."""

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
"""Where every jobq process looks for NATS when it is told nothing (ENV_NATS_URL unset)."""


# --- exit codes: the interface between a pod and the dispatcher -----------------------------

EXIT_TASK_FAILED = 1
"""Worker runner exit codes, the interface between a pod and the dispatcher: the task raised."""
EXIT_BAD_ARGS = 2
"""The task's arguments or environment are invalid: never worth a retry."""
EXIT_TASK_NOT_FOUND = 3
"""The task is no built-in and cannot be imported: never worth a retry."""
EXIT_NATS_UNREACHABLE = 4
"""The worker could not reach NATS: an infrastructure disruption, not the task's fault."""
EXIT_RESULT_EXISTS = 5
"""Another writer's result is already stored under this attempt's key: the worker never
overwrites it, and its own result is lost (retried like a task failure)."""

EXIT_SUPERSEDED = 6
"""A newer attempt owns the job's checkpoints (``CheckpointPointer.owner``): this attempt was
superseded and stops rather than compete with it (the dispatcher has already replaced it)."""

POD_REASON_START_ERROR = "StartError"
"""PodStatus.reason of a pod whose command could not be started (no such program, permission
denied), as Kubernetes reports it; jobq's node agent and simulated kubelet report it the same way:
phase Failed, exit code EXIT_START_ERROR, the OS error as the message (``log_tail``). The
dispatcher ends the attempt with FailureReason.START_ERROR: another node would fail the same way."""
EXIT_START_ERROR = 128
"""The exit code Kubernetes (containerd/runc) reports with StartError."""


# --- pod environment: what the dispatcher sets for a pod, what the worker runner reads ---------

ENV_JOB_ID = "JOBQ_JOB_ID"
"""The job's id."""
ENV_ATTEMPT = "JOBQ_ATTEMPT"
"""The attempt's number, >= 1."""
ENV_QUEUE = "JOBQ_QUEUE"
ENV_TASK = "JOBQ_TASK"
"""A key of BUILTIN_TASKS or 'package.module:function' (task jobs only)."""
ENV_ARGS = "JOBQ_ARGS"
"""The task's arguments as a JSON object, when they fit MAX_INLINE_ARGS_BYTES."""
ENV_ARGS_FROM = "JOBQ_ARGS_FROM"
"""Set (to ARGS_FROM_RECORD) instead of ENV_ARGS when the arguments are bigger: the runner reads
them from ``spec.args`` of the job's record in bucket ``jobq_jobs``."""
ARGS_FROM_RECORD = "record"
ENV_NATS_URL = "JOBQ_NATS_URL"
"""nats://host:port, or a comma-separated list."""
ENV_NODE = "JOBQ_NODE"
"""The node running the pod (set by the node agent or the kubelet)."""
ENV_POD = "JOBQ_POD"
"""The pod's name (set by the dispatcher): the writer identity stamped on results and artifacts."""
ENV_POD_UID = "JOBQ_POD_UID"
"""The pod's uid, unique per pod ever created (Kubernetes: ``metadata.uid`` via the downward API;
embedded: generated by the node agent). Part of the writer identity."""
ENV_NATS_CREDS = "JOBQ_NATS_CREDS"
"""A NATS credentials file (see ``credentials.nats_auth_options``)."""
ENV_NATS_USER = "JOBQ_NATS_USER"
ENV_NATS_PASSWORD = "JOBQ_NATS_PASSWORD"
ENV_NATS_PASSWORD_FILE = "JOBQ_NATS_PASSWORD_FILE"
"""A file holding the password (read at connect; wins over ENV_NATS_PASSWORD)."""
ENV_NATS_TOKEN = "JOBQ_NATS_TOKEN"
"""A token; jobq's node agents and task pods get one minted for their node or attempt."""
ENV_NATS_AUTH_DIR = "JOBQ_NATS_AUTH_DIR"
"""The dispatcher's directory of NATS auth secrets (issuer seed, token key): with it, it serves
the auth callout and gives each task pod a token for its attempt."""
ENV_LOG_FORMAT = "JOBQ_LOG_FORMAT"
"""``json`` or ``console``: how a jobq process started by another one logs."""
ENV_NATS_CA = "JOBQ_NATS_CA"
"""A PEM CA bundle: verify NATS's TLS certificate against it (see ``tls.nats_tls_options``)."""
ENV_NATS_CERT = "JOBQ_NATS_CERT"
"""A PEM client certificate for a NATS server that asks for one (optional, with ENV_NATS_KEY)."""
ENV_NATS_KEY = "JOBQ_NATS_KEY"


def idempotency_digest(key: str) -> str:
    """KV-safe key for an idempotency key of any characters."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def submit_subject(queue: str) -> str:
    return f"{SUBMIT_PREFIX}{queue}"


def max_deliveries_subject(stream: str = STREAM_SUBMIT, consumer: str = CONSUMER_DISPATCHER) -> str:
    """JetStream's advisory for a message that reached its consumer's max_deliver; its JSON
    carries ``stream_seq`` and ``deliveries``."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


def dead_original_key(sha256: str) -> str:
    """Key in OBJECT_STORE_DEAD of a dead letter's whole original (content-addressed)."""
    return f"sha256-{sha256}"


def event_subject(job_id: str) -> str:
    return f"jobq.events.{job_id}"


def dead_subject(reason: str) -> str:
    return f"jobq.dead.{reason}"


def heartbeat_subject(job_id: str, attempt: int) -> str:
    return f"jobq.attempt.{job_id}.{attempt}.hb"


def pod_inbox_prefix(job_id: str, attempt: int) -> str:
    """A task pod's reply subjects (nats-py ``inbox_prefix``): the only ones it may subscribe to."""
    return f"_INBOX.pod.{job_id}.{attempt}"


def job_request_subject(op: str) -> str:
    """``cancel`` or ``retry``: a JobRequest, answered with a JobRequestReply."""
    return f"jobq.jobs.{op}"


def result_key(job_id: str, attempt: int) -> str:
    return f"{job_id}.{attempt}"


def progress_key(job_id: str, attempt: int) -> str:
    """Key in BUCKET_PROGRESS of an attempt's progress; only that attempt's pod may write it."""
    return f"{job_id}.{attempt}"


ARTIFACT_NAME_PATTERN = r"^[-_=.a-zA-Z0-9]+(/[-_=.a-zA-Z0-9]+)*$"
"""An artifact name: path segments of letters, digits and ``-_=.`` (no segment ``..``)."""
MAX_ARTIFACT_NAME_CHARS = 255


def artifact_key(job_id: str, attempt: int, name: str) -> str:
    """Where attempt ``attempt`` of ``job_id`` keeps artifact ``name`` in OBJECT_STORE_ARTIFACTS.
    Artifacts are scoped to the attempt, so a superseded attempt that keeps running can never
    replace what the accepted attempt wrote; readers resolve a job's artifact through the record's
    ``result_attempt``."""
    return f"{job_id}/{attempt}/{name}"


def pod_name(job_id: str, attempt: int) -> str:
    """Pods are named deterministically so that creating one twice is harmless."""
    return f"job-{job_id}-{attempt}"

