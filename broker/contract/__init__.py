"""The jobq wire contract: every subject, header, bucket and message schema.

This is the one package that the submitter, the workers and the broker share. Anything that
crosses a process boundary is defined here and nowhere else; non-Python publishers get the same
definitions as JSON Schema from ``jobq schema``.

Subjects (``<x>`` is a placeholder)::

    jobq.submit.<queue>                 job submissions (stream JOBQ_SUBMIT, work queue,
                                        de-duplicated by the Nats-Msg-Id header); exactly one
                                        token after ``jobq.submit.``, matching QUEUE_PATTERN, and
                                        it is the job's queue (``submission_queue``)
    jobq.events.<job_id>                every job transition (stream JOBQ_EVENTS)
    jobq.dead.<reason>                  dead-letter records (stream JOBQ_DEAD)
    jobq.attempt.<job_id>.<n>.hb        worker heartbeats and progress (core NATS)
    jobq.node.<node>.status             node agent heartbeat with its pods (core NATS)
    jobq.node.<node>.pods.create        request/reply: run a pod on that node
    jobq.node.<node>.pods.delete        request/reply: kill and forget a pod
    jobq.node.<node>.pods.log           request/reply: bytes of a pod's log (NodeLogRequest)
    $KV.jobq_progress.<job_id>.<n>      an attempt's latest progress (AttemptProgress; KV, written by its pod)
    $KV.jobq_checkpoints.<job_id>       the job's newest checkpoint and its owner attempt (CheckpointPointer;
                                        compare-and-set by the job's pods)
    jobq.logs                           request/reply: a job attempt's output (LogRequest)
    jobq.stack.control                  request/reply: the embedded stack's supervisor (CONTROL_SUBJECT)

Buckets: ``jobq_jobs`` (job records, CAS-updated), ``jobq_results`` (one entry per attempt,
key ``<job_id>.<n>``), ``jobq_progress`` (each attempt's latest progress, key ``<job_id>.<n>``,
expiring after PROGRESS_MAX_AGE_S), ``jobq_idempotency`` (idempotency key digest -> job id), ``jobq_leader``
(dispatcher leader lease, TTL) and the object stores
``jobq_artifacts`` (trained models and other task outputs) and ``jobq_dead`` (the whole original
of every dead letter, key ``dead_original_key(sha256)``).

Stream ``JOBQ_ADVISORIES`` keeps JetStream's MAX_DELIVERIES advisories of the dispatcher's
submission consumer, so a submission JetStream gave up on is dead-lettered even if no dispatcher
was listening at that moment.

Modules (import the package and qualify, ``contract.JobSpec``; the modules are where it is written)::

    names           streams, buckets, subjects, headers, pod environment keys, exit codes
    limits          payload, record, dead-letter and log-tail bounds
    credentials     NATS credentials from the environment
    tls             TLS towards NATS from the environment (JOBQ_NATS_CA)
    states          JobPhase, AttemptState, FailureReason, PodPhase, EventType
    resources       Resources, PROFILES
    tasks           BUILTIN_TASKS, the task catalogue
    jobs            JobSpec, RetryPolicy, JobRecord, Attempt, AttemptCheckpoints, Writer
    checkpoints     CheckpointPointer, the checkpoint bucket and object names
    messages        JobEvent, TaskResult, AttemptHeartbeat, AttemptProgress, LogRequest, LogChunk
    node_protocol   the node subjects, PodSpec, PodStatus, NodeStatus, node replies
    dead_letters    DeadLetter
    submissions     parse_submission, SubmissionError, json_schema
"""

from __future__ import annotations

from broker.contract.base import (
    clip,
    utcnow,
)
from broker.contract.checkpoints import (
    BUCKET_CHECKPOINTS,
    CHECKPOINT_SEGMENT,
    MAX_CHECKPOINT_BYTES,
    CheckpointPointer,
    attempt_checkpoints,
    checkpoint_object_key,
    checkpoint_pointer_key,
)
from broker.contract.credentials import (
    POD_NATS_CREDS_PATH,
    CredentialsError,
    nats_auth_options,
    public_url,
    read_secret_file,
)
from broker.contract.dead_letters import (
    DeadLetter,
)
from broker.contract.jobs import (
    JOB_ID_PATTERN,
    MAX_CHECKPOINT_STEP,
    MAX_RETENTION_S,
    QUEUE_PATTERN,
    TASK_PATTERN,
    Attempt,
    AttemptCheckpoints,
    JobRecord,
    JobSpec,
    RetryPolicy,
    Writer,
    accepted_attempt,
)
from broker.contract.limits import (
    DEAD_LETTER_EXCERPT_BYTES,
    DEAD_LETTER_INLINE_BYTES,
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MESSAGE_CHARS,
    DUPLICATE_WINDOW_S,
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    MAX_INLINE_ARGS_BYTES,
    MAX_RECORD_BYTES,
    MAX_SUBMISSION_BYTES,
    NATS_MAX_PAYLOAD,
    SUBMIT_MAX_DELIVER,
    SUBMIT_REDELIVERY_DELAYS_S,
    SUBMIT_STREAM_MAX_MSG_BYTES,
    tail_of,
)
from broker.contract.messages import (
    AttemptHeartbeat,
    AttemptProgress,
    JobEvent,
    JobRequest,
    JobRequestReply,
    LogChunk,
    LogRequest,
    TaskResult,
    artifact_digest,
)
from broker.contract.names import (
    ARGS_FROM_RECORD,
    ARTIFACT_NAME_PATTERN,
    ARTIFACT_WRITER_HEADER,
    BUCKET_IDEMPOTENCY,
    BUCKET_JOBS,
    BUCKET_LEADER,
    BUCKET_PROGRESS,
    BUCKET_RESULTS,
    CONSUMER_DISPATCHER,
    CONTRACT_VERSION,
    CONTROL_SUBJECT,
    DEAD_WILDCARD,
    DEFAULT_NATS_URL,
    ENV_ARGS,
    ENV_ARGS_FROM,
    ENV_ATTEMPT,
    ENV_JOB_ID,
    ENV_LOG_FORMAT,
    ENV_NATS_AUTH_DIR,
    ENV_NATS_CA,
    ENV_NATS_CERT,
    ENV_NATS_CREDS,
    ENV_NATS_KEY,
    ENV_NATS_PASSWORD,
    ENV_NATS_PASSWORD_FILE,
    ENV_NATS_TOKEN,
    ENV_NATS_URL,
    ENV_NATS_USER,
    ENV_NODE,
    ENV_POD,
    ENV_POD_UID,
    ENV_QUEUE,
    ENV_TASK,
    EVENTS_WILDCARD,
    EXIT_BAD_ARGS,
    EXIT_NATS_UNREACHABLE,
    EXIT_RESULT_EXISTS,
    EXIT_START_ERROR,
    EXIT_SUPERSEDED,
    EXIT_TASK_FAILED,
    EXIT_TASK_NOT_FOUND,
    HEADER_CONTRACT,
    HEADER_EPOCH,
    HEADER_MSG_ID,
    HEARTBEAT_WILDCARD,
    JOB_REQUEST_WILDCARD,
    LEADER_LEASE_KEY,
    LOGS_SUBJECT,
    MAX_ARTIFACT_NAME_CHARS,
    MAX_PROGRESS_MESSAGE_CHARS,
    OBJECT_STORE_ARTIFACTS,
    OBJECT_STORE_DEAD,
    POD_REASON_START_ERROR,
    PROGRESS_MAX_AGE_S,
    PROGRESS_MAX_VALUE_BYTES,
    STREAM_ADVISORIES,
    STREAM_DEAD,
    STREAM_EVENTS,
    STREAM_SUBMIT,
    SUBMIT_PREFIX,
    SUBMIT_WILDCARD,
    artifact_key,
    dead_original_key,
    dead_subject,
    event_subject,
    heartbeat_subject,
    idempotency_digest,
    job_request_subject,
    max_deliveries_subject,
    pod_inbox_prefix,
    pod_name,
    progress_key,
    result_key,
    submit_subject,
)
from broker.contract.node_protocol import (
    NODE_STATUS_WILDCARD,
    NodeLogReply,
    NodeLogRequest,
    NodeReply,
    NodeStatus,
    PodSpec,
    PodStatus,
    node_create_subject,
    node_delete_subject,
    node_log_subject,
    node_status_subject,
)
from broker.contract.resources import (
    PROFILES,
    Resources,
    parse_memory,
)
from broker.contract.states import (
    AttemptState,
    EventType,
    FailureReason,
    JobPhase,
    PodPhase,
)
from broker.contract.submissions import (
    SubmissionError,
    guess_job_id,
    json_schema,
    parse_submission,
    submission_queue,
)
from broker.contract.tasks import (
    BUILTIN_TASKS,
    BuiltinTask,
)
from broker.contract.tls import (
    POD_NATS_CA_PATH,
    NatsTlsError,
    client_tls_context,
    describe_tls_failure,
    nats_tls_options,
)

__all__ = [
    "ARGS_FROM_RECORD",
    "ARTIFACT_NAME_PATTERN",
    "ARTIFACT_WRITER_HEADER",
    "BUCKET_CHECKPOINTS",
    "BUCKET_IDEMPOTENCY",
    "BUCKET_JOBS",
    "BUCKET_LEADER",
    "BUCKET_PROGRESS",
    "BUCKET_RESULTS",
    "BUILTIN_TASKS",
    "CHECKPOINT_SEGMENT",
    "CONSUMER_DISPATCHER",
    "CONTRACT_VERSION",
    "CONTROL_SUBJECT",
    "DEAD_LETTER_EXCERPT_BYTES",
    "DEAD_LETTER_INLINE_BYTES",
    "DEAD_LETTER_MAX_BYTES",
    "DEAD_LETTER_MESSAGE_CHARS",
    "DEAD_WILDCARD",
    "DEFAULT_NATS_URL",
    "DUPLICATE_WINDOW_S",
    "ENV_ARGS",
    "ENV_ARGS_FROM",
    "ENV_ATTEMPT",
    "ENV_JOB_ID",
    "ENV_LOG_FORMAT",
    "ENV_NATS_AUTH_DIR",
    "ENV_NATS_CA",
    "ENV_NATS_CERT",
    "ENV_NATS_CREDS",
    "ENV_NATS_KEY",
    "ENV_NATS_PASSWORD",
    "ENV_NATS_PASSWORD_FILE",
    "ENV_NATS_TOKEN",
    "ENV_NATS_URL",
    "ENV_NATS_USER",
    "ENV_NODE",
    "ENV_POD",
    "ENV_POD_UID",
    "ENV_QUEUE",
    "ENV_TASK",
    "EVENTS_WILDCARD",
    "EXIT_BAD_ARGS",
    "EXIT_NATS_UNREACHABLE",
    "EXIT_RESULT_EXISTS",
    "EXIT_START_ERROR",
    "EXIT_SUPERSEDED",
    "EXIT_TASK_FAILED",
    "EXIT_TASK_NOT_FOUND",
    "HEADER_CONTRACT",
    "HEADER_EPOCH",
    "HEADER_MSG_ID",
    "HEARTBEAT_WILDCARD",
    "JOB_ID_PATTERN",
    "JOB_REQUEST_WILDCARD",
    "LEADER_LEASE_KEY",
    "LOGS_SUBJECT",
    "LOG_TAIL_BYTES",
    "LOG_TAIL_LINES",
    "MAX_ARTIFACT_NAME_CHARS",
    "MAX_CHECKPOINT_BYTES",
    "MAX_CHECKPOINT_STEP",
    "MAX_INLINE_ARGS_BYTES",
    "MAX_PROGRESS_MESSAGE_CHARS",
    "MAX_RECORD_BYTES",
    "MAX_RETENTION_S",
    "MAX_SUBMISSION_BYTES",
    "NATS_MAX_PAYLOAD",
    "NODE_STATUS_WILDCARD",
    "OBJECT_STORE_ARTIFACTS",
    "OBJECT_STORE_DEAD",
    "POD_NATS_CA_PATH",
    "POD_NATS_CREDS_PATH",
    "POD_REASON_START_ERROR",
    "PROFILES",
    "PROGRESS_MAX_AGE_S",
    "PROGRESS_MAX_VALUE_BYTES",
    "QUEUE_PATTERN",
    "STREAM_ADVISORIES",
    "STREAM_DEAD",
    "STREAM_EVENTS",
    "STREAM_SUBMIT",
    "SUBMIT_MAX_DELIVER",
    "SUBMIT_PREFIX",
    "SUBMIT_REDELIVERY_DELAYS_S",
    "SUBMIT_STREAM_MAX_MSG_BYTES",
    "SUBMIT_WILDCARD",
    "TASK_PATTERN",
    "Attempt",
    "AttemptCheckpoints",
    "AttemptHeartbeat",
    "AttemptProgress",
    "AttemptState",
    "BuiltinTask",
    "CheckpointPointer",
    "CredentialsError",
    "DeadLetter",
    "EventType",
    "FailureReason",
    "JobEvent",
    "JobPhase",
    "JobRecord",
    "JobRequest",
    "JobRequestReply",
    "JobSpec",
    "LogChunk",
    "LogRequest",
    "NatsTlsError",
    "NodeLogReply",
    "NodeLogRequest",
    "NodeReply",
    "NodeStatus",
    "PodPhase",
    "PodSpec",
    "PodStatus",
    "Resources",
    "RetryPolicy",
    "SubmissionError",
    "TaskResult",
    "Writer",
    "accepted_attempt",
    "artifact_digest",
    "artifact_key",
    "attempt_checkpoints",
    "checkpoint_object_key",
    "checkpoint_pointer_key",
    "client_tls_context",
    "clip",
    "dead_original_key",
    "dead_subject",
    "describe_tls_failure",
    "event_subject",
    "guess_job_id",
    "heartbeat_subject",
    "idempotency_digest",
    "job_request_subject",
    "json_schema",
    "max_deliveries_subject",
    "nats_auth_options",
    "nats_tls_options",
    "node_create_subject",
    "node_delete_subject",
    "node_log_subject",
    "node_status_subject",
    "parse_memory",
    "parse_submission",
    "pod_inbox_prefix",
    "pod_name",
    "progress_key",
    "public_url",
    "read_secret_file",
    "result_key",
    "submission_queue",
    "submit_subject",
    "tail_of",
    "utcnow",
]
