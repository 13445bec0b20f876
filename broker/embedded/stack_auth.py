"""The NATS users of an embedded stack that runs its own NATS (``jobq up``, ``jobq demo``).

Secrets live in ``<data_dir>/nats-auth`` (broker/natsauth/keys.py) and are reused by the next
start. Each process the stack starts gets its own role's credentials and no others: dispatchers
the ``jobq-dispatcher`` user (and the auth directory, to serve the callout and mint pod tokens),
each node agent a token for its own node; task pods get theirs from the dispatcher. stack.json
points other commands at the submitter's and the operator's passwords (``stack_state.nats_auth_of``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from broker import contract, settings
from broker.natsauth import keys, permissions, server_config, tokens

AUTH_DIR = "nats-auth"
AUTH_ENV = "JOBQ_NATS_AUTH"
"""``on`` (the default): NATS users per role and the auth callout; ``off``: no NATS authentication."""
NODE = "node"
STATE_ROLES = (permissions.ROLE_SUBMITTER, permissions.ROLE_OPERATOR)
"""Roles whose credentials stack.json points to (for the CLI, the SDK's users, chaos)."""


def auth_from_env(environ: Mapping[str, str] | None = None) -> bool:
    return settings.switch(os.environ if environ is None else environ, AUTH_ENV,
                           on_means="a NATS user per role")


class StackAuth:
    """The users of one stack's NATS, from the secrets in ``directory`` (created if missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        keys.ensure(directory)
        self.callout_keys = keys.callout_keys(directory)

    def authorization_block(self) -> str:
        return server_config.authorization_block(self.directory)

    def options(self, role: str) -> dict[str, str]:
        """nats.connect credentials of a fixed role."""
        return {"user": keys.user_name(role), "password": keys.password(self.directory, role)}

    def process_env(self, role: str, *, node: str = "") -> dict[str, str]:
        """The credentials a process of ``role`` (a fixed role, or NODE) is started with."""
        if role == NODE:
            return {contract.ENV_NATS_TOKEN: tokens.node_token(self.callout_keys.token_key, node)}
        env = {contract.ENV_NATS_USER: keys.user_name(role),
               contract.ENV_NATS_PASSWORD_FILE: str(keys.password_file(self.directory, role).resolve())}
        if role == permissions.ROLE_DISPATCHER:
            env[contract.ENV_NATS_AUTH_DIR] = str(self.directory.resolve())
        return env

    def state(self) -> dict[str, dict[str, str]]:
        """stack.json's ``nats_auth``: where the submitter's and operator's passwords are."""
        return {role: {"user": keys.user_name(role),
                       "password_file": str(keys.password_file(self.directory, role).resolve())}
                for role in STATE_ROLES}
