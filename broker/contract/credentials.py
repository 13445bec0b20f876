"""NATS credentials a jobq process reads from its environment."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from broker.contract import names

POD_NATS_CREDS_PATH = "/etc/jobq/nats/nats.creds"
"""Where a task pod finds the ``creds`` key of the operator's JOBQ_POD_NATS_SECRET (Kubernetes).
The volume is optional, so the file is missing when the Secret has no such key: the runner then
ignores JOBQ_NATS_CREDS at this path and uses the Secret's user/password or token instead."""


class CredentialsError(ValueError):
    """A credentials setting names a file that cannot be read."""


def nats_auth_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """nats.connect() credentials from JOBQ_NATS_CREDS, JOBQ_NATS_USER with JOBQ_NATS_PASSWORD_FILE
    or JOBQ_NATS_PASSWORD, or JOBQ_NATS_TOKEN."""
    options: dict[str, Any] = {}
    if environ.get(names.ENV_NATS_CREDS):
        options["user_credentials"] = environ[names.ENV_NATS_CREDS]
    if environ.get(names.ENV_NATS_USER):
        options["user"] = environ[names.ENV_NATS_USER]
        options["password"] = environ.get(names.ENV_NATS_PASSWORD, "")
        if environ.get(names.ENV_NATS_PASSWORD_FILE):
            options["password"] = read_secret_file(environ[names.ENV_NATS_PASSWORD_FILE],
                                                   names.ENV_NATS_PASSWORD_FILE)
    if environ.get(names.ENV_NATS_TOKEN):
        options["token"] = environ[names.ENV_NATS_TOKEN]
    return options


def read_secret_file(path: str, setting: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise CredentialsError(f"{setting}={path}: cannot read it ({exc.strerror or exc})") from None


def public_url(urls: str) -> str:
    """NATS URL(s) without user and password: what may be handed to a pod (it brings its own
    credentials, or none)."""
    cleaned = []
    for url in urls.split(","):
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.netloc.rpartition("@")[2]
        cleaned.append(urllib.parse.urlunsplit(parts._replace(netloc=host)))
    return ",".join(cleaned)
