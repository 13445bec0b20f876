"""Who may publish and subscribe to what: one function per role, used both for the server's
config file (the fixed roles) and for the users the auth callout issues (nodes and pods).

NATS permissions are subject patterns; JetStream is reached through them too (``$JS.API.*``
requests, ``$KV.<bucket>.<key>`` and ``$O.<bucket>.*`` writes), so "may read records" is a set of
read-only API subjects and "may write its own result" is one exact ``$KV`` subject.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from broker import contract

ROLE_DISPATCHER = "dispatcher"
ROLE_SUBMITTER = "submitter"
ROLE_OPERATOR = "operator"
FIXED_ROLES = (ROLE_DISPATCHER, ROLE_SUBMITTER, ROLE_OPERATOR)
"""Roles with a user in the server's config; node agents and task pods get theirs from the callout."""

_JS_READ = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
)
"""Read-only JetStream API: stream info, stored messages by sequence or subject."""
_JS_WATCH = (
    "$JS.API.CONSUMER.CREATE.*",
    "$JS.API.CONSUMER.CREATE.*.>",
    "$JS.API.CONSUMER.INFO.*.*",
    "$JS.FC.>",
)
"""Ephemeral ordered consumers: how clients watch a bucket or read an object's chunks."""
_NOT_THE_DISPATCHERS_QUEUE = (
    f"$JS.API.CONSUMER.CREATE.{contract.STREAM_SUBMIT}",
    f"$JS.API.CONSUMER.CREATE.{contract.STREAM_SUBMIT}.>",
)
"""A consumer of the submission stream could take submissions away from the dispatcher."""


@dataclasses.dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    responses: bool = False
    """May answer requests it received (reply subjects), once each."""

    def config(self) -> dict[str, Any]:
        """The ``permissions`` map of a user in nats-server's config."""
        out: dict[str, Any] = {
            "publish": {"allow": list(self.publish), "deny": list(self.deny_publish)},
            "subscribe": {"allow": list(self.subscribe), "deny": list(self.deny_subscribe)},
        }
        if self.responses:
            out["allow_responses"] = True
        return out

    def claims(self) -> dict[str, Any]:
        """The permission part of a NATS user JWT's ``nats`` claims."""
        out: dict[str, Any] = {
            "pub": _allow_deny(self.publish, self.deny_publish),
            "sub": _allow_deny(self.subscribe, self.deny_subscribe),
        }
        if self.responses:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


def _allow_deny(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"allow": list(allow)}
    if deny:
        out["deny"] = list(deny)
    return out


def dispatcher() -> Permissions:
    """Everything it runs on (records, events, dead letters, the lease, node requests, the auth
    callout's answers), but never a node's status or an attempt's heartbeat: the evidence it
    judges others by comes from them."""
    return Permissions(
        publish=(">",), subscribe=(">",),
        deny_publish=(contract.NODE_STATUS_WILDCARD, contract.HEARTBEAT_WILDCARD, contract.CONTROL_SUBJECT),
    )


def submitter() -> Permissions:
    """Publish submissions; read records, events, heartbeats and stored progress, results,
    artifacts and dead letters; ask the dispatcher for logs, cancellations and re-drives. No writes to any
    bucket or stream but ``jobq.submit.>``, and no consumer on the submission stream."""
    return Permissions(
        publish=(contract.SUBMIT_WILDCARD, contract.LOGS_SUBJECT, contract.JOB_REQUEST_WILDCARD,
                 *_JS_READ, *_JS_WATCH),
        deny_publish=_NOT_THE_DISPATCHERS_QUEUE,
        subscribe=("_INBOX.>", contract.EVENTS_WILDCARD, contract.DEAD_WILDCARD,
                   contract.HEARTBEAT_WILDCARD),
    )


def operator() -> Permissions:
    """The installation's owner (the `jobq up` supervisor, chaos experiments, tests): everything."""
    return Permissions(publish=(">",), subscribe=(">",))


def node(name: str) -> Permissions:
    """A node agent: its own node's requests in, its own status out, answers to what it received."""
    return Permissions(
        publish=(contract.node_status_subject(name),),
        subscribe=(f"jobq.node.{name}.pods.>",),
        responses=True,
    )


def pod(job_id: str, attempt: int) -> Permissions:
    """A task pod: writes only its attempt's heartbeat, progress and result, its job's checkpoint
    pointer (compare-and-set, fenced by attempt: docs/design/checkpoints.md), and artifacts (object
    names cannot be scoped by subject: its result lists the digest of each artifact it saved, and
    readers check it); reads what a submitter reads (a task may load another job's model); gets
    replies only on its own inbox, so it never sees what others are sent."""
    results, artifacts = contract.BUCKET_RESULTS, contract.OBJECT_STORE_ARTIFACTS
    return Permissions(
        publish=(
            contract.heartbeat_subject(job_id, attempt),
            f"$KV.{contract.BUCKET_PROGRESS}.{contract.progress_key(job_id, attempt)}",
            f"$KV.{contract.BUCKET_CHECKPOINTS}.{contract.checkpoint_pointer_key(job_id)}",
            f"$KV.{results}.{contract.result_key(job_id, attempt)}",
            f"$O.{artifacts}.C.>", f"$O.{artifacts}.M.*",
            *_JS_READ, *_JS_WATCH,
        ),
        deny_publish=_NOT_THE_DISPATCHERS_QUEUE,
        subscribe=(f"{contract.pod_inbox_prefix(job_id, attempt)}.>",),
    )
