"""Dispatcher settings: frozen groups, read once from the environment, passed to each component.

Every field maps 1:1 to an environment variable (``JOBQ_<FIELD>``) and to a Helm value.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import ValidationError

from broker import contract, policy
from broker.pod_settings import check_toleration, parse_resource_profiles, parse_tolerations
from broker.settings_error import SettingsError as SettingsError

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
CORS_ORIGIN = re.compile(r"https?://[^/\s*,]+")


def switch(environ: Mapping[str, str], name: str, *, on_means: str) -> bool:
    """An on/off setting that is on unless set off: ``on``/``off`` (also 1/0, true/false,
    yes/no); anything else is a SettingsError saying what ``on`` (the default) means."""
    value = environ.get(name, "").strip().lower()
    if value in ("", "on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise SettingsError(f"{name}={value!r}: use 'on' ({on_means}, the default) or 'off'")


@dataclasses.dataclass(frozen=True, slots=True)
class NatsSettings:
    url: str = contract.DEFAULT_NATS_URL
    """Comma-separated NATS server URLs (JOBQ_NATS_URL)."""
    replicas: int = 1
    """Replicas of jobq's streams and buckets: 1, or 3 on a clustered NATS (JOBQ_NATS_REPLICAS)."""
    auth_dir: str = ""
    """The NATS auth secrets (JOBQ_NATS_AUTH_DIR): with them the dispatcher serves the auth
    callout and gives each task pod a token for its own attempt (broker/natsauth)."""
    ca_file: str = ""
    """PEM CA bundle NATS's TLS certificate is verified against (JOBQ_NATS_CA); also handed to
    task pods (on Kubernetes, JOBQ_POD_NATS_CA_SECRET replaces it with the mounted copy)."""

    def __post_init__(self) -> None:
        if self.replicas not in (1, 3, 5):
            raise SettingsError(f"JOBQ_NATS_REPLICAS must be 1, 3 or 5, not {self.replicas}")


@dataclasses.dataclass(frozen=True, slots=True)
class DispatcherSettings:
    workers: int = 16
    """Reconciles running at once (JOBQ_WORKERS)."""
    resync_interval_s: float = 5.0
    """Every non-terminal job is reconciled at least this often, events or not, except jobs
    parked waiting for room, a node or a queue slot (woken by the change that releases them)."""
    resync_parked_s: float = 300.0
    """Parked waiting jobs are still each reconciled at least this often, spread evenly (the
    safety net for a missed wake-up; their cost is this many jobs per this many seconds)."""
    heartbeat_timeout_s: float = 10.0
    """A running attempt whose worker is silent this long is lost (heartbeat_lost)."""
    startup_timeout_s: float = 60.0
    """A task attempt must send its first heartbeat within this long of starting."""
    node_timeout_s: float = 3.0
    """A node silent this long is NotReady and its attempts are rescheduled (local backend)."""
    node_silence_s: float = 5.0
    """A node whose task attempts all sent no heartbeat for this long, while attempts on other
    nodes did, is lost (both backends; attempts beat every JOBQ_HEARTBEAT_S = 1 s)."""
    lease_ttl_s: float = 5.0
    """The leader lease expires this long after the leader's last renewal."""
    reschedule_on_node_loss: bool = True
    """Switch off only to prove that a chaos experiment can fail (negative control)."""
    queue_limits: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Most running attempts per queue, e.g. JOBQ_QUEUE_LIMITS="gpu=2,default=50"."""
    queue_pending_timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """pending_timeout_s per queue for jobs that bring none, e.g. JOBQ_QUEUE_PENDING_TIMEOUTS="gpu=3600"."""
    shutdown_grace_s: float = 5.0
    """On SIGTERM, reconciles in flight get this long to finish."""
    retention_s: float = 7 * 86400.0
    """A finished job (record, results, artifacts) is deleted this long after it ended, unless the
    job (``JobSpec.retention_s``) or its queue (``queue_retention``) says otherwise (JOBQ_RETENTION_S)."""
    queue_retention: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """retention_s per queue for jobs that bring none, e.g. JOBQ_QUEUE_RETENTION="scratch=3600"."""
    idempotency_window_s: float = 7 * 86400.0
    """An idempotency key keeps binding its job this long after it was claimed, or until the job
    is deleted, whichever comes first (JOBQ_IDEMPOTENCY_WINDOW_S; docs/design/retention.md)."""
    queue_policies: Mapping[str, contract.RetryPolicy] = dataclasses.field(default_factory=dict)
    """Default retry policy per queue for jobs that bring none, as JSON:
    JOBQ_QUEUE_POLICIES='{"gpu": {"max_attempts": 5, "backoff_cap_s": 300}}'."""
    queue_policy: policy.QueuePolicy = dataclasses.field(default_factory=policy.QueuePolicy)
    """What jobs each queue admits, as JSON (JOBQ_QUEUE_POLICY, ``broker/policy.py``):
    '{"*": {"tasks": ["sklearn.*"]}, "gpu": {"commands": true, "images": ["reg.example/ml/*"]}}'.
    Unset: built-in tasks only, no commands, no image of the job's own."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SettingsError("JOBQ_WORKERS must be at least 1")
        if self.node_timeout_s <= 0 or self.heartbeat_timeout_s <= 0 or self.node_silence_s <= 0:
            raise SettingsError(
                "JOBQ_NODE_TIMEOUT_S, JOBQ_NODE_SILENCE_S and JOBQ_HEARTBEAT_TIMEOUT_S must be positive")
        for name, value in (("JOBQ_RETENTION_S", self.retention_s),
                            *((f"JOBQ_QUEUE_RETENTION ({q})", v) for q, v in self.queue_retention.items())):
            if not 1 <= value <= contract.MAX_RETENTION_S:
                raise SettingsError(f"{name}={value:g}: a retention is 1 to {contract.MAX_RETENTION_S} s")
        if not 60 <= self.idempotency_window_s <= contract.MAX_RETENTION_S:
            raise SettingsError(f"JOBQ_IDEMPOTENCY_WINDOW_S must be 60 to {contract.MAX_RETENTION_S} s")


@dataclasses.dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8222
    """Dashboard, API and /metrics port; 0 picks a free one (JOBQ_HTTP_PORT)."""
    token: str = dataclasses.field(default="", repr=False)
    """Bearer token every route but the probes and the dashboard shell requires when set
    (JOBQ_HTTP_TOKEN, or the first line of the file JOBQ_HTTP_TOKEN_FILE names). Never logged."""
    metrics_open: bool = False
    """Serve /metrics without the token even when one is set (JOBQ_HTTP_METRICS_OPEN)."""
    cors_origins: tuple[str, ...] = ()
    """Origins other than the dispatcher's own whose pages may call the API, e.g.
    JOBQ_HTTP_CORS_ORIGINS="https://ops.example.com"; empty: same origin only."""
    tls_cert_file: str = ""
    """PEM certificate (chain) to serve HTTPS with (JOBQ_HTTP_TLS_CERT); empty: plain HTTP."""
    tls_key_file: str = ""
    """PEM private key of ``tls_cert_file`` (JOBQ_HTTP_TLS_KEY)."""

    def __post_init__(self) -> None:
        if self.token != self.token.strip() or any(c.isspace() for c in self.token):
            raise SettingsError("JOBQ_HTTP_TOKEN must not contain whitespace")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("set both JOBQ_HTTP_TLS_CERT and JOBQ_HTTP_TLS_KEY (HTTPS), or neither")
        for origin in self.cors_origins:
            if not CORS_ORIGIN.fullmatch(origin):
                raise SettingsError(f"JOBQ_HTTP_CORS_ORIGINS: {origin!r} is not scheme://host[:port] "
                                    "(no wildcards)")


@dataclasses.dataclass(frozen=True, slots=True)
class BackendSettings:
    kind: Literal["local", "kubernetes"] = "local"
    kubeconfig: str = ""
    """Path of a kubeconfig; empty means in-cluster service account (kubernetes backend)."""
    namespace: str = "jobq-jobs"
    image: str = "jobq:latest"
    """Image of task pods on Kubernetes."""
    allow_privileged: bool = False
    """Operators may allow privileged pods and host mounts; jobs never can by themselves."""
    pod_service_account: str = ""
    """serviceAccountName of task pods (JOBQ_POD_SERVICE_ACCOUNT). Empty: the namespace's
    ``default`` account with no token mounted; set: the account's own automount setting applies."""
    image_pull_secrets: tuple[str, ...] = ()
    """Secrets in the jobs namespace for pulling task images (JOBQ_POD_IMAGE_PULL_SECRETS="a,b")."""
    gpu_node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """nodeSelector of pods that request GPUs only (JOBQ_GPU_NODE_SELECTOR="k=v,k2=v2")."""
    gpu_tolerations: tuple[Mapping[str, object], ...] = ()
    """Tolerations of pods that request GPUs only, as a JSON list of Kubernetes tolerations
    (JOBQ_GPU_TOLERATIONS='[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')."""
    pod_nats_secret: str = ""
    """Secret in the jobs namespace with the task pods' NATS credentials (JOBQ_POD_NATS_SECRET):
    optional keys ``user``/``password``/``token`` become JOBQ_NATS_USER/PASSWORD/TOKEN, an optional
    key ``creds`` is mounted at ``contract.POD_NATS_CREDS_PATH`` (JOBQ_NATS_CREDS). The kubelet
    reads it; the dispatcher never does."""
    pod_nats_ca_secret: str = ""
    """Secret in the jobs namespace whose key ``ca.crt`` (the NATS CA) is mounted into task pods at
    ``contract.POD_NATS_CA_PATH``, their JOBQ_NATS_CA (JOBQ_POD_NATS_CA_SECRET). Empty: pods get
    the dispatcher's own JOBQ_NATS_CA path (right where pods share its file system: the dev cluster)."""
    resource_profiles: Mapping[str, contract.Resources] = dataclasses.field(default_factory=dict)
    """Operator overrides of the built-in profiles (small, medium, large, gpu) as JSON, fields
    not given keep the built-in value: JOBQ_RESOURCE_PROFILES='{"gpu": {"memory": "32Gi"}}'.
    ``small`` also applies to jobs that name neither a profile nor resources."""

    def __post_init__(self) -> None:
        for name, value in (("JOBQ_POD_SERVICE_ACCOUNT", self.pod_service_account),
                            ("JOBQ_POD_NATS_SECRET", self.pod_nats_secret),
                            ("JOBQ_POD_NATS_CA_SECRET", self.pod_nats_ca_secret),
                            *(("JOBQ_POD_IMAGE_PULL_SECRETS", v) for v in self.image_pull_secrets)):
            if value and not DNS_SUBDOMAIN.fullmatch(value):
                raise SettingsError(f"{name}: {value!r} is not a valid Kubernetes object name")
        for key, value in self.gpu_node_selector.items():
            if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                raise SettingsError(f"JOBQ_GPU_NODE_SELECTOR: {key}={value} is not a valid label")
        for toleration in self.gpu_tolerations:
            check_toleration(toleration)
        unknown = sorted(set(self.resource_profiles) - set(contract.PROFILES))
        if unknown:
            raise SettingsError(f"JOBQ_RESOURCE_PROFILES may only override the built-in profiles "
                                f"{sorted(contract.PROFILES)}, not {unknown}")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    nats: NatsSettings = NatsSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    http: HttpSettings = HttpSettings()
    backend: BackendSettings = BackendSettings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from ``JOBQ_*`` variables; one not set keeps its field's default above."""
        n, d, h, b = NatsSettings(), DispatcherSettings(), HttpSettings(), BackendSettings()

        def get(name: str, default: str) -> str:
            return environ.get(f"JOBQ_{name}", default)

        def number(name: str, default: float) -> float:
            raw = get(name, str(default))
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"JOBQ_{name}={raw!r} is not a number") from None

        def flag(name: str, default: bool) -> bool:
            raw = get(name, "1" if default else "0").lower()
            if raw not in ("1", "0", "true", "false", "yes", "no"):
                raise SettingsError(f"JOBQ_{name}={raw!r} must be true or false")
            return raw in ("1", "true", "yes")

        kind = get("BACKEND", b.kind)
        if kind not in ("local", "kubernetes"):
            raise SettingsError(f"JOBQ_BACKEND must be local or kubernetes, not {kind!r}")
        return cls(
            nats=NatsSettings(
                url=get("NATS_URL", n.url), replicas=int(number("NATS_REPLICAS", n.replicas)),
                auth_dir=get("NATS_AUTH_DIR", n.auth_dir),
                ca_file=get("NATS_CA", n.ca_file).strip(),
            ),
            dispatcher=DispatcherSettings(
                workers=int(number("WORKERS", d.workers)),
                resync_interval_s=number("RESYNC_INTERVAL_S", d.resync_interval_s),
                resync_parked_s=number("RESYNC_PARKED_S", d.resync_parked_s),
                heartbeat_timeout_s=number("HEARTBEAT_TIMEOUT_S", d.heartbeat_timeout_s),
                startup_timeout_s=number("STARTUP_TIMEOUT_S", d.startup_timeout_s),
                node_timeout_s=number("NODE_TIMEOUT_S", d.node_timeout_s),
                node_silence_s=number("NODE_SILENCE_S", d.node_silence_s),
                lease_ttl_s=number("LEASE_TTL_S", d.lease_ttl_s),
                reschedule_on_node_loss=flag("RESCHEDULE_ON_NODE_LOSS", d.reschedule_on_node_loss),
                queue_limits=parse_queue_limits(get("QUEUE_LIMITS", "")),
                queue_pending_timeouts=parse_queue_pending_timeouts(get("QUEUE_PENDING_TIMEOUTS", "")),
                shutdown_grace_s=number("SHUTDOWN_GRACE_S", d.shutdown_grace_s),
                retention_s=number("RETENTION_S", d.retention_s),
                queue_retention=parse_queue_retention(get("QUEUE_RETENTION", "")),
                idempotency_window_s=number("IDEMPOTENCY_WINDOW_S", d.idempotency_window_s),
                queue_policies=parse_queue_policies(get("QUEUE_POLICIES", "")),
                queue_policy=parse_queue_policy(get("QUEUE_POLICY", "")),
            ),
            http=HttpSettings(
                host=get("HTTP_HOST", h.host),
                port=int(number("HTTP_PORT", h.port)),
                token=http_token(environ),
                metrics_open=flag("HTTP_METRICS_OPEN", h.metrics_open),
                cors_origins=tuple(
                    filter(None, (o.strip().rstrip("/") for o in get("HTTP_CORS_ORIGINS", "").split(",")))),
                tls_cert_file=get("HTTP_TLS_CERT", "").strip(),
                tls_key_file=get("HTTP_TLS_KEY", "").strip(),
            ),
            backend=BackendSettings(
                kind="kubernetes" if kind == "kubernetes" else "local",
                kubeconfig=get("KUBECONFIG", b.kubeconfig),
                namespace=get("NAMESPACE", b.namespace),
                image=get("IMAGE", b.image),
                allow_privileged=flag("ALLOW_PRIVILEGED", b.allow_privileged),
                pod_service_account=get("POD_SERVICE_ACCOUNT", "").strip(),
                image_pull_secrets=tuple(
                    filter(None, (s.strip() for s in get("POD_IMAGE_PULL_SECRETS", "").split(",")))),
                gpu_node_selector=parse_node_selector(get("GPU_NODE_SELECTOR", "")),
                gpu_tolerations=parse_tolerations(get("GPU_TOLERATIONS", "")),
                pod_nats_secret=get("POD_NATS_SECRET", "").strip(),
                pod_nats_ca_secret=get("POD_NATS_CA_SECRET", "").strip(),
                resource_profiles=parse_resource_profiles(get("RESOURCE_PROFILES", "")),
            ),
        )


def http_token(environ: Mapping[str, str]) -> str:
    """JOBQ_HTTP_TOKEN, else the first line of the file JOBQ_HTTP_TOKEN_FILE names (a mounted
    Kubernetes Secret), else "" (no token)."""
    token = environ.get("JOBQ_HTTP_TOKEN", "")
    path = environ.get("JOBQ_HTTP_TOKEN_FILE", "")
    if token and path:
        raise SettingsError("set JOBQ_HTTP_TOKEN or JOBQ_HTTP_TOKEN_FILE, not both")
    if not path:
        return token.strip()
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise SettingsError(f"JOBQ_HTTP_TOKEN_FILE={path!r} cannot be read: {exc.strerror}") from None
    if not lines or not lines[0].strip():
        raise SettingsError(f"JOBQ_HTTP_TOKEN_FILE={path!r} is empty")
    return lines[0].strip()


def parse_queue_policies(raw: str) -> dict[str, contract.RetryPolicy]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return {queue: contract.RetryPolicy.model_validate(policy) for queue, policy in value.items()}
    except (ValueError, ValidationError) as exc:
        raise SettingsError(
            f"JOBQ_QUEUE_POLICIES is not a JSON object of queue -> retry policy: {exc}"
        ) from None


def parse_queue_policy(raw: str) -> policy.QueuePolicy:
    try:
        return policy.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"JOBQ_QUEUE_POLICY: {exc}") from None


def parse_queue_limits(raw: str) -> dict[str, int]:
    numbers = _queue_numbers(raw, "JOBQ_QUEUE_LIMITS", whole=True)
    return {queue: int(value) for queue, value in numbers.items()}


def parse_queue_pending_timeouts(raw: str) -> dict[str, float]:
    return _queue_numbers(raw, "JOBQ_QUEUE_PENDING_TIMEOUTS", whole=False)


def parse_queue_retention(raw: str) -> dict[str, float]:
    return _queue_numbers(raw, "JOBQ_QUEUE_RETENTION", whole=False)


def _queue_numbers(raw: str, name: str, *, whole: bool) -> dict[str, float]:
    """``queue=number,queue=number`` (positive; whole numbers only if ``whole``)."""
    numbers: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        queue, sep, value = part.partition("=")
        try:
            number = float(value) if sep and not whole else float(int(value.strip()))
        except ValueError:
            number = -1.0
        if not sep or not queue.strip() or number < 0 or (not whole and number == 0):
            raise SettingsError(f"{name} entry {part!r} is not queue=number")
        numbers[queue.strip()] = number
    return numbers


def parse_node_selector(raw: str) -> dict[str, str]:
    selector: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"JOBQ_GPU_NODE_SELECTOR entry {part!r} is not label=value")
        selector[key.strip()] = value.strip()
    return selector
