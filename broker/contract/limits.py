"""Sizes and bounds both sides of the wire rely on: payloads, records, dead letters, log tails."""

from __future__ import annotations

NATS_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``: one message, so one submission or one KV value (a job
record, a result) is at most this, headers included."""
MAX_SUBMISSION_BYTES = 960 * 1024
"""Largest accepted submission payload, both as published and as the dispatcher re-serialises it
(the spec of a job record). It leaves room under NATS_MAX_PAYLOAD for the record's attempts (see
MAX_RECORD_BYTES); bigger inputs belong in the object store."""
MAX_RECORD_BYTES = NATS_MAX_PAYLOAD - 4 * 1024
"""Largest job record (one value of ``jobq_jobs``), leaving room for the publish's headers. A
record that would grow past it drops the kept output of its older attempts (JobRecord.fitted)."""
DUPLICATE_WINDOW_S = 15 * 60
"""How long JetStream remembers a Nats-Msg-Id; the dispatcher's own check has no limit."""
SUBMIT_STREAM_MAX_MSG_BYTES = NATS_MAX_PAYLOAD
"""Largest message stream JOBQ_SUBMIT stores (JetStream refuses bigger ones at publish time);
bigger than MAX_SUBMISSION_BYTES so that an oversized submission still gets a dead letter."""

SUBMIT_MAX_DELIVER = 5
"""Deliveries of one submission before JetStream gives up on it (``max_deliver`` of the
dispatcher's consumer). Invalid submissions are dead-lettered on their first delivery; only
infrastructure errors (the store unavailable) lead to a redelivery, after
SUBMIT_REDELIVERY_DELAYS_S. A submission still not acked after this many deliveries is
dead-lettered with reason ``undeliverable`` from JetStream's MAX_DELIVERIES advisory."""
SUBMIT_REDELIVERY_DELAYS_S = (2.0, 4.0, 8.0, 16.0)
"""Pause before the 2nd, 3rd, ... delivery of a submission that hit an infrastructure error:
the store may be unavailable for about 30 s before a valid job is given up as undeliverable."""

DEAD_LETTER_MAX_BYTES = 512 * 1024
"""A dead letter's JSON is never bigger than this (NATS's default max_payload is 1 MiB), however
big or odd the original: see ``DeadLetter.encode``."""
DEAD_LETTER_INLINE_BYTES = 64 * 1024
"""An original up to this size that is valid UTF-8 is also carried whole, as ``payload``."""
DEAD_LETTER_EXCERPT_BYTES = 4 * 1024
"""A dead letter's ``excerpt``: this many leading bytes of the original, decoded leniently."""
DEAD_LETTER_MESSAGE_CHARS = 2000
"""A dead letter's ``message`` (and a SubmissionError's) is cut to this many characters."""

MAX_INLINE_ARGS_BYTES = 16 * 1024
"""Largest JSON of a task's arguments given inline in ENV_ARGS. Linux limits one environment
string to 128 KiB (MAX_ARG_STRLEN) and all of them plus the command line to about a quarter of
the stack limit, and a Pod object's env is stored in etcd: bigger arguments travel in the job
record (ENV_ARGS_FROM)."""

LOG_TAIL_BYTES = 2048
LOG_TAIL_LINES = 80
"""A failed attempt keeps at most this much of its output in its record (Kubernetes'
FallbackToLogsOnError uses the same bounds for a container's termination message)."""


def tail_of(data: bytes) -> str:
    """The last LOG_TAIL_LINES lines / LOG_TAIL_BYTES bytes of ``data``, decoded leniently."""
    lines = data[-LOG_TAIL_BYTES:].decode(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])
