"""Limits: what decide() and the pod spec take from the operator's settings.

Every default lives in ``broker.settings``; a ``Limits()`` built without arguments (unit tests)
has the same values as the settings' defaults, and the dispatcher builds its own with
``Limits.from_settings``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from broker import contract, policy, retry_policy, settings
from broker.natsauth import keys

_DISPATCHER = settings.DispatcherSettings()


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    heartbeat_timeout_s: float = _DISPATCHER.heartbeat_timeout_s
    """An attempt whose worker is silent this long (after its first heartbeat) is lost."""
    startup_timeout_s: float = _DISPATCHER.startup_timeout_s
    """How long a task attempt may take to send its first heartbeat (a busy node starts slowly)."""
    default_policy: contract.RetryPolicy = retry_policy.DEFAULT_POLICY
    queue_policies: Mapping[str, contract.RetryPolicy] = dataclasses.field(default_factory=dict)
    """Retry policy of jobs that bring none, per queue (else ``default_policy``)."""
    nats_url: str = ""
    """Given to pods so the worker can reach NATS (empty: none is given)."""
    nats_ca: str = ""
    """JOBQ_NATS_CA given to pods: the CA NATS's TLS certificate is verified against (empty: none)."""
    image: str | None = None
    """Default container image for task pods (Kubernetes; None: the backend's own)."""
    extra_env: tuple[tuple[str, str], ...] = ()
    pod_token_key: bytes | None = None
    """Mints each task pod's NATS token for its own attempt (None: pods get no token)."""
    profiles: Mapping[str, contract.Resources] = dataclasses.field(default_factory=dict)
    """The operator's overrides of contract.PROFILES (JOBQ_RESOURCE_PROFILES), by profile name."""
    reschedule_on_node_loss: bool = _DISPATCHER.reschedule_on_node_loss
    """False only for the chaos negative control: attempts on a lost node are left alone."""
    queue_pending_timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """pending_timeout_s of jobs that bring none, per queue (JOBQ_QUEUE_PENDING_TIMEOUTS)."""
    queue_policy: policy.QueuePolicy = _DISPATCHER.queue_policy
    """What each queue admits (JOBQ_QUEUE_POLICY): checked again before every attempt."""

    @classmethod
    def from_settings(cls, config: settings.Settings) -> Limits:
        d = config.dispatcher
        return cls(
            heartbeat_timeout_s=d.heartbeat_timeout_s,
            startup_timeout_s=d.startup_timeout_s,
            nats_url=contract.public_url(config.nats.url),  # never the dispatcher's credentials
            nats_ca=config.nats.ca_file,  # public: a CA certificate
            image=config.backend.image,
            reschedule_on_node_loss=d.reschedule_on_node_loss,
            queue_policies=dict(d.queue_policies),
            queue_pending_timeouts=dict(d.queue_pending_timeouts),
            queue_policy=d.queue_policy,
            profiles=dict(config.backend.resource_profiles),
            pod_token_key=(keys.callout_keys(Path(config.nats.auth_dir)).token_key
                           if config.nats.auth_dir else None),
        )


def policy_of(job: contract.JobRecord, limits: Limits) -> contract.RetryPolicy:
    """The retry policy ``job`` runs under: its own, else its queue's, else the default."""
    return job.spec.retry or limits.queue_policies.get(job.spec.queue) or limits.default_policy
