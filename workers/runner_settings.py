"""The worker runner's settings, read from the pod's environment (see ``workers.runner``).

Environment (all strings)::

    JOBQ_NATS_URL        nats://host:port, or a comma-separated list (default contract.DEFAULT_NATS_URL)
    JOBQ_JOB_ID          the job's id                     JOBQ_ATTEMPT   attempt number, >= 1
    JOBQ_TASK            a key of contract.BUILTIN_TASKS or 'package.module:function'
    JOBQ_ARGS            the task's arguments, a JSON object (default {}); or
    JOBQ_ARGS_FROM=record  read them from the job's record in KV bucket jobq_jobs (the dispatcher
                         sets this when they are bigger than contract.MAX_INLINE_ARGS_BYTES)
    JOBQ_NODE            the node running the pod (optional, reported in heartbeats and results)
    JOBQ_POD             the pod's name (set by the dispatcher; default contract.pod_name(job, attempt))
    JOBQ_POD_UID         the pod's uid (the node agent's, or Kubernetes' metadata.uid); optional
    JOBQ_HEARTBEAT_S     seconds between heartbeats (default 1.0)
    JOBQ_NATS_CREDS      a NATS credentials file; or JOBQ_NATS_USER + JOBQ_NATS_PASSWORD; or
    JOBQ_NATS_TOKEN      (all optional)
    JOBQ_NATS_CA         PEM CA to verify NATS's TLS certificate against (optional; with
                         JOBQ_NATS_CERT/JOBQ_NATS_KEY for a client certificate)
    JOBQ_NATS_WAIT_S     give up connecting after this many seconds (default 30)

The first nine are the contract's ENV_* constants (the credentials too); the heartbeat interval
and the connect wait are the runner's own settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from broker import contract

ENV_HEARTBEAT_S = "JOBQ_HEARTBEAT_S"
ENV_NATS_WAIT_S = "JOBQ_NATS_WAIT_S"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class SettingsError(ValueError):
    """The runner's environment is incomplete or invalid."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerSettings:
    job_id: str
    attempt: int
    task: str
    args: dict[str, Any]
    args_in_record: bool = False
    """``args`` is still to be read from the job's record (JOBQ_ARGS_FROM=record)."""
    nats_servers: tuple[str, ...] = (contract.DEFAULT_NATS_URL,)
    node: str | None = None
    pod: str = ""
    """The pod's name (JOBQ_POD; default ``contract.pod_name(job_id, attempt)``)."""
    pod_uid: str = ""
    """The pod's uid (JOBQ_POD_UID), "" when not given."""
    heartbeat_s: float = 1.0
    """Seconds between heartbeats."""
    connect_wait_s: float = 30.0
    """Seconds to keep trying to reach NATS before exiting with EXIT_NATS_UNREACHABLE."""
    auth: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    """nats.connect() credentials, from contract.nats_auth_options."""
    tls: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    """nats.connect() TLS options, from contract.nats_tls_options (JOBQ_NATS_CA)."""

    def writer(self, *, boot_id: str = "") -> contract.Writer:
        """Who this attempt's outputs are stamped with."""
        return contract.Writer(pod=self.pod, pod_uid=self.pod_uid, node=self.node, boot_id=boot_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RunnerSettings:
        def required(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                raise SettingsError(f"{name} is not set")
            return value

        def number(name: str, default: float) -> float:
            raw = environ.get(name, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number") from None
            if not value > 0 or value == float("inf"):
                raise SettingsError(f"{name}={raw!r} must be a positive number")
            return value

        raw_attempt = required(contract.ENV_ATTEMPT)
        if not raw_attempt.isdigit() or int(raw_attempt) < 1:
            raise SettingsError(f"{contract.ENV_ATTEMPT}={raw_attempt!r} is not a positive integer")
        raw_args = environ.get(contract.ENV_ARGS, "").strip()
        args_from = environ.get(contract.ENV_ARGS_FROM, "").strip()
        if args_from and args_from != contract.ARGS_FROM_RECORD:
            raise SettingsError(f"{contract.ENV_ARGS_FROM}={args_from!r}: the only source is "
                                f"{contract.ARGS_FROM_RECORD!r}")
        if args_from and raw_args:
            raise SettingsError(f"set {contract.ENV_ARGS} or {contract.ENV_ARGS_FROM}, not both")
        args = parse_args(raw_args or "{}", source=contract.ENV_ARGS)
        servers = tuple(s.strip() for s in environ.get(contract.ENV_NATS_URL, "").split(",") if s.strip())
        try:
            tls = contract.nats_tls_options(environ)
        except contract.NatsTlsError as exc:
            raise SettingsError(str(exc)) from None
        job_id, attempt = required(contract.ENV_JOB_ID), int(raw_attempt)
        return cls(job_id=job_id, attempt=attempt,
                   task=required(contract.ENV_TASK), args=args, args_in_record=bool(args_from),
                   nats_servers=servers or (contract.DEFAULT_NATS_URL,),
                   node=environ.get(contract.ENV_NODE) or None,
                   pod=environ.get(contract.ENV_POD, "").strip() or contract.pod_name(job_id, attempt),
                   pod_uid=environ.get(contract.ENV_POD_UID, "").strip(),
                   heartbeat_s=number(ENV_HEARTBEAT_S, 1.0),
                   connect_wait_s=number(ENV_NATS_WAIT_S, 30.0),
                   auth=contract.nats_auth_options(_without_missing_pod_creds(environ)), tls=tls)


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    """The machine's boot id (a new one after every reboot); "" where it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def parse_args(raw: str | bytes, *, source: str) -> dict[str, Any]:
    """A task's arguments: a JSON object (SettingsError otherwise)."""
    try:
        args = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise SettingsError(f"{source} must be a JSON object, not {type(args).__name__}")
    return args


def _without_missing_pod_creds(environ: Mapping[str, str]) -> Mapping[str, str]:
    """Drop JOBQ_NATS_CREDS when it names the pod's optional creds mount and the operator's
    NATS Secret has no ``creds`` key (see contract.POD_NATS_CREDS_PATH); any other path is kept."""
    if environ.get(contract.ENV_NATS_CREDS) == contract.POD_NATS_CREDS_PATH and not os.path.exists(
            contract.POD_NATS_CREDS_PATH):
        return {k: v for k, v in environ.items() if k != contract.ENV_NATS_CREDS}
    return environ
