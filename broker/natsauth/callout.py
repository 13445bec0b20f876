"""The auth callout service: nats-server asks it (on ``$SYS.REQ.USER.AUTH``) about every client
that is not one of the fixed roles' users, and it answers with a user scoped to the identity of
the client's token (a node agent's node, a task pod's attempt), or with a refusal.

Every dispatcher replica serves it (one queue group), and so does the `jobq up` supervisor, so a
pod or node can connect while any of them is up. The request is a JWT signed by the server;
the answer a JWT signed by the issuer account whose public key is in the server's config.
"""

from __future__ import annotations

import dataclasses

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.natsauth import jwt, keys, nkeys, tokens
from broker.responder import Responder

log = structlog.get_logger("jobq.natsauth")

CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE_GROUP = "jobq-auth-callout"
GLOBAL_ACCOUNT = "$G"
"""The account users are placed in (the config defines no other)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    response: str
    """The response JWT for the server."""
    identity: str = ""
    """Who was granted a user (``node:<n>``, ``pod:<job>:<attempt>``), or "" when refused."""
    refusal: str = ""


def answer(request_jwt: str, callout: keys.CalloutKeys) -> Decision:
    """The decision on one authorization request (JwtError if it is not a server's)."""
    claims = jwt.decode(request_jwt, issuer_prefix=nkeys.PREFIX_SERVER)
    request = claims.get("nats") or {}
    user_nkey = str(request.get("user_nkey", ""))
    server_id = str((request.get("server_id") or {}).get("id", ""))
    token = str((request.get("connect_opts") or {}).get("auth_token", ""))
    response: dict[str, object] = {"type": "authorization_response", "version": 2}
    try:
        if not token:
            raise tokens.TokenError("no token: connect with a jobq token, or as a configured user")
        identity = tokens.verify(callout.token_key, token)
    except tokens.TokenError as exc:
        response["error"] = str(exc)
        return Decision(jwt.encode({"sub": user_nkey, "aud": server_id, "nats": response}, callout.issuer),
                        refusal=str(exc))
    user = {"sub": user_nkey, "aud": GLOBAL_ACCOUNT, "name": identity.name,
            "nats": {**identity.permissions().claims(), "subs": -1, "data": -1, "payload": -1,
                     "type": "user", "version": 2}}
    response["jwt"] = jwt.encode(user, callout.issuer)
    return Decision(jwt.encode({"sub": user_nkey, "aud": server_id, "nats": response}, callout.issuer),
                    identity=identity.name)


def server(nc: NATS, callout: keys.CalloutKeys) -> Responder:
    """Answers authorization requests on ``nc`` (start it). ``nc`` must be a configured user
    listed in the callout's ``auth_users`` (the dispatcher's or the operator's)."""

    async def reply(msg: Msg) -> bytes | None:
        try:
            decision = answer(msg.data.decode(errors="replace"), callout)
        except jwt.JwtError as exc:  # not from a server: nothing to answer
            log.warning("nats_auth_request_invalid", reason=str(exc))
            return None
        if decision.refusal:
            log.warning("nats_auth_refused", reason=decision.refusal)
        else:
            log.debug("nats_auth_granted", identity=decision.identity)
        return decision.response.encode()

    return Responder(nc, [CALLOUT_SUBJECT], queue=QUEUE_GROUP, answer=reply, name="nats-auth")
