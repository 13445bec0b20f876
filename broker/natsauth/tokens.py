"""The tokens node agents and task pods connect with: an identity (``node:<name>`` or
``pod:<job>:<attempt>``) and an HMAC of it under the installation's token key. Whoever holds the
key (the dispatcher, the `jobq up` supervisor) mints them; the auth callout checks them and
grants the identity's permissions. A token names one node or one attempt and cannot be widened."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re

from broker import contract
from broker.natsauth import permissions

_SCHEME = "jobq1"
_NODE_NAME = r"[A-Za-z0-9_-]{1,63}"
"""One NATS subject token: a node's name is part of its subjects."""


class TokenError(ValueError):
    """Not a jobq token, or not signed with this installation's key."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    kind: str
    """``node`` or ``pod``."""
    node: str = ""
    job_id: str = ""
    attempt: int = 0

    @property
    def name(self) -> str:
        return f"node:{self.node}" if self.kind == "node" else f"pod:{self.job_id}:{self.attempt}"

    def permissions(self) -> permissions.Permissions:
        if self.kind == "node":
            return permissions.node(self.node)
        return permissions.pod(self.job_id, self.attempt)


def _sign(key: bytes, identity: str) -> str:
    mac = hmac.new(key, f"{_SCHEME}:{identity}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def node_token(key: bytes, node: str) -> str:
    identity = f"node:{node}"
    return f"{_SCHEME}:{identity}:{_sign(key, identity)}"


def pod_token(key: bytes, job_id: str, attempt: int) -> str:
    identity = f"pod:{job_id}:{attempt}"
    return f"{_SCHEME}:{identity}:{_sign(key, identity)}"


def verify(key: bytes, token: str) -> Identity:
    """The identity ``token`` was minted for; TokenError if it was not minted with ``key`` or
    names something that is no node or attempt."""
    scheme, _, rest = token.partition(":")
    identity, _, signature = rest.rpartition(":")
    if scheme != _SCHEME or not identity:
        raise TokenError("not a jobq token")
    if not hmac.compare_digest(signature, _sign(key, identity)):
        raise TokenError(f"the token for {identity!r} is not signed with this installation's key")
    kind, *parts = identity.split(":")
    if kind == "node" and len(parts) == 1 and re.fullmatch(_NODE_NAME, parts[0]):
        return Identity(kind="node", node=parts[0])
    if (kind == "pod" and len(parts) == 2 and re.fullmatch(r"[1-9][0-9]{0,5}", parts[1])
            and re.fullmatch(contract.JOB_ID_PATTERN, parts[0])):
        return Identity(kind="pod", job_id=parts[0], attempt=int(parts[1]))
    raise TokenError(f"{identity!r} names no node or attempt")
