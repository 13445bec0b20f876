"""NATS JWTs (``alg: ed25519-nkey``): encoding the claims an auth callout answers with, and
decoding the request the server sends. Claims are plain dicts; ``jti`` is the base32 SHA-512/256
of the claims without it, as NATS computes it."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from broker.natsauth import nkeys

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class JwtError(ValueError):
    """Not a JWT, or its signature does not verify."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """Sign ``claims`` (``sub``, ``nats``, optional ``aud``/``name``/``exp``) as ``issuer``."""
    body = {**claims, "iat": int(time.time()), "iss": issuer.public_key}
    body.pop("jti", None)
    body["jti"] = base64.b32encode(hashlib.new("sha512_256", _dumps(body)).digest()).decode().rstrip("=")
    signed = f"{_b64(_dumps(_HEADER))}.{_b64(_dumps(body))}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def decode(token: str, *, issuer_prefix: int) -> dict[str, Any]:
    """The claims of ``token`` once its signature verifies against its ``iss`` (of kind
    ``issuer_prefix``); JwtError otherwise."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("expected three dot-separated parts")
    try:
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except ValueError as exc:
        raise JwtError(f"unreadable JWT: {exc}") from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise JwtError("the JWT names no issuer")
    if not nkeys.verify(claims["iss"], issuer_prefix, f"{parts[0]}.{parts[1]}".encode(), signature):
        raise JwtError("the JWT's signature does not verify")
    return claims
