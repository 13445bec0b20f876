"""nats-server's ``authorization`` block: a user per fixed role with its permissions, and the
auth callout that every other client (node agents, task pods) goes through."""

from __future__ import annotations

import json
from pathlib import Path

from broker.natsauth import keys, permissions

_ROLE_PERMISSIONS = {
    permissions.ROLE_DISPATCHER: permissions.dispatcher,
    permissions.ROLE_SUBMITTER: permissions.submitter,
    permissions.ROLE_OPERATOR: permissions.operator,
}


def authorization_block(directory: Path) -> str:
    """The block for the secrets in ``directory`` (``keys.ensure`` made them). Values are JSON
    strings, which the NATS config format reads as quoted strings (so ``$JS...`` is no variable)."""
    issuer = keys.callout_keys(directory).issuer.public_key
    users = []
    for role in permissions.FIXED_ROLES:
        users.append({"user": keys.user_name(role), "password": keys.password(directory, role),
                      "permissions": _ROLE_PERMISSIONS[role]().config()})
    callout = {"issuer": issuer, "auth_users": [keys.user_name(role) for role in permissions.FIXED_ROLES]}
    body = {"users": users, "auth_callout": callout}
    return "authorization " + json.dumps(body, indent=2) + "\n"


AUTHORIZATION_FILE = "authorization.conf"
"""Written next to the secrets by ``jobq nats-auth init``: the block for a NATS jobq does not
start (``include`` it in nats-server's config; the chart's bundled NATS does)."""


def write_authorization_file(directory: Path) -> Path:
    path = directory / AUTHORIZATION_FILE
    path.touch(mode=0o600)  # it holds the passwords
    path.chmod(0o600)
    path.write_text("# Written by `jobq nats-auth init` (broker/natsauth): include it in "
                    "nats-server's config.\n" + authorization_block(directory))
    return path
