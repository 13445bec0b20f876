"""Pure translation between jobq's PodSpec/PodState and Kubernetes Pod and Node objects (dicts)."""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from broker import contract
from broker.backends import base

Obj = dict[str, Any]

LABEL_JOB = "jobq.dev/job-id"
LABEL_ATTEMPT = "jobq.dev/attempt"
LABEL_QUEUE = "jobq.dev/queue"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
ANNOTATION_EPOCH = "jobq.io/epoch"
"""The leader epoch of the dispatcher that created the pod (informational: the API server cannot
compare it with anything; the job record's compare-and-set before the create is the fence)."""
MANAGED_BY = "jobq"
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "task"
RUN_AS_USER = 65532
"""Non-root uid for task containers (the distroless ``nonroot`` user)."""
GRACE_S = 10
NATS_SECRET_VOLUME = "nats-auth"
NATS_SECRET_ENV = ((contract.ENV_NATS_USER, "user"), (contract.ENV_NATS_PASSWORD, "password"),
                   (contract.ENV_NATS_TOKEN, "token"))
"""Env of task pods -> key of the operator's NATS Secret (JOBQ_POD_NATS_SECRET); ``creds`` is a file."""
NATS_SECRET_CREDS_KEY = "creds"
NATS_CA_VOLUME = "nats-ca"
NATS_CA_KEY = "ca.crt"
"""Key of JOBQ_POD_NATS_CA_SECRET holding the NATS CA (cert-manager's name for it)."""


def pod_manifest(spec: contract.PodSpec, *, namespace: str, image: str,
                 allow_privileged: bool = False, service_account: str = "",
                 image_pull_secrets: Sequence[str] = (), gpu_node_selector: Mapping[str, str] | None = None,
                 gpu_tolerations: Sequence[Mapping[str, object]] = (), nats_secret: str = "",
                 nats_ca_secret: str = "") -> Obj:
    """The Pod for ``spec``: hardened, restartPolicy Never, anti-affine to the nodes to avoid.

    The operator's pod defaults (settings.BackendSettings): ``service_account`` (empty: the
    namespace's default account, no token mounted), ``image_pull_secrets``, a node selector and
    tolerations for pods that request GPUs only, and ``nats_secret``, a Secret whose optional keys
    become the worker's NATS credentials (see NATS_SECRET_ENV; the kubelet reads it, not us), and
    ``nats_ca_secret``, a Secret whose key ``ca.crt`` becomes the worker's JOBQ_NATS_CA.
    """
    requests: Obj = {"cpu": f"{round(spec.resources.cpu * 1000)}m", "memory": spec.resources.memory}
    limits: Obj = {"memory": spec.resources.memory}
    if spec.resources.gpu:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(spec.resources.gpu)
    container: Obj = {
        "name": CONTAINER,
        "image": spec.image or image,
        "command": list(spec.command),
        "env": [*({"name": k, "value": v} for k, v in sorted(spec.env.items())),
                # The runner stamps heartbeats and results with the node it runs on, and its
                # results and artifacts with the Pod's uid (the dispatcher checks it).
                {"name": contract.ENV_NODE, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": contract.ENV_POD_UID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}],
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": GRACE_S,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account  # its automountServiceAccountToken applies
    else:
        pod_spec["automountServiceAccountToken"] = False
    if image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in image_pull_secrets]
    if spec.resources.gpu:
        if gpu_node_selector:
            pod_spec["nodeSelector"] = dict(gpu_node_selector)
        if gpu_tolerations:
            pod_spec["tolerations"] = [dict(t) for t in gpu_tolerations]
    if nats_secret:
        add_nats_secret(pod_spec, container, nats_secret)
    if nats_ca_secret:
        add_nats_ca_secret(pod_spec, container, nats_ca_secret)
    if spec.avoid_nodes:
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": list(spec.avoid_nodes)}]}]}}}
    pod: Obj = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": spec.name, "namespace": namespace,
                     "labels": {LABEL_JOB: spec.job_id, LABEL_ATTEMPT: str(spec.attempt),
                                LABEL_QUEUE: spec.queue, LABEL_MANAGED: MANAGED_BY},
                     "annotations": {ANNOTATION_EPOCH: str(spec.epoch)}},
        "spec": pod_spec,
    }
    validate(pod, allow_privileged=allow_privileged)
    return pod


def add_nats_secret(pod_spec: Obj, container: Obj, secret: str) -> None:
    """Credentials from ``secret``, every key optional: user/password/token as env (secretKeyRef),
    ``creds`` as a read-only file at contract.POD_NATS_CREDS_PATH named by JOBQ_NATS_CREDS (the
    runner ignores that path when the key, hence the file, is missing)."""
    replaced = {name for name, _ in NATS_SECRET_ENV} | {contract.ENV_NATS_CREDS}
    env = [e for e in container["env"] if e["name"] not in replaced]
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for name, key in NATS_SECRET_ENV]
    env.append({"name": contract.ENV_NATS_CREDS, "value": contract.POD_NATS_CREDS_PATH})
    container["env"] = env
    directory, filename = posixpath.split(contract.POD_NATS_CREDS_PATH)
    container["volumeMounts"] = [{"name": NATS_SECRET_VOLUME, "mountPath": directory, "readOnly": True}]
    pod_spec["volumes"] = [{"name": NATS_SECRET_VOLUME, "secret": {
        "secretName": secret, "optional": True,
        "items": [{"key": NATS_SECRET_CREDS_KEY, "path": filename}]}}]


def add_nats_ca_secret(pod_spec: Obj, container: Obj, secret: str) -> None:
    """Key ``ca.crt`` of ``secret`` as a read-only file at contract.POD_NATS_CA_PATH, named by
    JOBQ_NATS_CA (replacing the dispatcher's own path). Not optional: a pod told to verify NATS
    against a CA it cannot read could not report anything; it waits for the Secret instead."""
    container["env"] = [e for e in container["env"] if e["name"] != contract.ENV_NATS_CA]
    container["env"].append({"name": contract.ENV_NATS_CA, "value": contract.POD_NATS_CA_PATH})
    directory, filename = posixpath.split(contract.POD_NATS_CA_PATH)
    container.setdefault("volumeMounts", []).append(
        {"name": NATS_CA_VOLUME, "mountPath": directory, "readOnly": True})
    pod_spec.setdefault("volumes", []).append({"name": NATS_CA_VOLUME, "secret": {
        "secretName": secret, "items": [{"key": NATS_CA_KEY, "path": filename}]}})


def validate(pod: Obj, *, allow_privileged: bool) -> None:
    """Refuse privileged containers, privilege escalation and host access unless the operator allows it."""
    if allow_privileged:
        return
    spec = pod["spec"]
    problems = [f"spec.{key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    problems += [f"volume {v.get('name')} is a hostPath" for v in spec.get("volumes", []) if "hostPath" in v]
    for c in spec["containers"]:
        ctx = c.get("securityContext") or {}
        if ctx.get("privileged"):
            problems.append(f"container {c['name']} is privileged")
        if ctx.get("allowPrivilegeEscalation", True):
            problems.append(f"container {c['name']} allows privilege escalation")
        if ctx.get("capabilities", {}).get("add"):
            problems.append(f"container {c['name']} adds capabilities")
    if problems:
        raise base.PodRejected("pod is not allowed without allow_privileged: " + "; ".join(problems))


def parse_time(raw: str | None) -> dt.datetime | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


def conditions(obj: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def _waiting_message(pod: Obj) -> str:
    """Why a pending pod does not run yet: the scheduler's verdict (PodScheduled=False), or the
    container's waiting reason (e.g. ContainerCreating, ErrImagePull)."""
    scheduled = conditions(pod).get("PodScheduled", {})
    if scheduled.get("status") == "False":
        return f"{scheduled.get('reason') or 'Unschedulable'}: {scheduled.get('message', '')}".strip()
    container: Obj = next(iter((pod.get("status") or {}).get("containerStatuses") or []), {})
    waiting = (container.get("state") or {}).get("waiting") or {}
    if waiting.get("reason") and waiting.get("reason") != "ContainerCreating":
        return f"{waiting['reason']}: {waiting.get('message', '')}".strip().rstrip(":")
    return ""


def pod_state(pod: Obj, *, node_ready: bool, node_why: str = "") -> base.PodState:
    """What the dispatcher sees of a Pod. A pod being deleted by someone else counts as failed."""
    meta, status = pod["metadata"], pod.get("status") or {}
    labels = meta.get("labels") or {}
    phase = contract.PodPhase(status.get("phase") or "Pending")
    container: Obj = next(iter(status.get("containerStatuses") or []), {})
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    running = state.get("running") or {}
    exit_code: int | None = terminated.get("exitCode")
    reason = terminated.get("reason") or status.get("reason") or ""
    if status.get("reason") == "Evicted":
        reason = "Evicted"
    if meta.get("deletionTimestamp") and phase not in (contract.PodPhase.SUCCEEDED, contract.PodPhase.FAILED):
        disrupted = conditions(pod).get("DisruptionTarget", {}).get("status") == "True"
        phase, reason = contract.PodPhase.FAILED, "Evicted" if disrupted else "Deleted"
    started = parse_time(running.get("startedAt") or terminated.get("startedAt") or status.get("startTime"))
    if phase == contract.PodPhase.PENDING:
        message = _waiting_message(pod)
    else:
        message = str(terminated.get("message") or "")[-contract.LOG_TAIL_BYTES:]
    return base.PodState(
        name=meta["name"], job_id=labels.get(LABEL_JOB, ""), attempt=int(labels.get(LABEL_ATTEMPT, "0")),
        phase=phase, node=pod.get("spec", {}).get("nodeName"), node_ready=node_ready, node_why=node_why,
        exit_code=exit_code, reason=reason, message=message, started_at=started,
        finished_at=parse_time(terminated.get("finishedAt")), terminating=bool(meta.get("deletionTimestamp")),
        uid=str(meta.get("uid") or ""))


def quantity_cpu(raw: str) -> float:
    raw = str(raw)
    return int(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)


def node_capacity(node: Obj) -> contract.Resources:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    memory = str(alloc.get("memory", "0"))
    try:
        contract.parse_memory(memory)
    except ValueError:
        memory = "0"
    return contract.Resources(cpu=max(quantity_cpu(alloc.get("cpu", "0")), 0.001), memory=memory,
                              gpu=min(int(alloc.get(GPU_RESOURCE, 0)), 16))


def pod_requests(pod: Obj) -> tuple[float, int]:
    cpu, memory = 0.0, 0
    for c in pod.get("spec", {}).get("containers", []):
        req = (c.get("resources") or {}).get("requests") or {}
        if "cpu" in req:
            cpu += quantity_cpu(req["cpu"])
        if "memory" in req:
            try:
                memory += contract.parse_memory(str(req["memory"]))
            except ValueError:
                pass
    return cpu, memory


POD_META_KEPT = ("name", "namespace", "uid", "resourceVersion", "labels", "deletionTimestamp")
POD_CONDITIONS_KEPT = ("PodScheduled", "DisruptionTarget")


def trim_pod(pod: Obj) -> Obj:
    """What the backend keeps of a Pod in its cache: exactly what ``pod_state``,
    ``pod_requests``, the indexes and the relist read (name, uid, resourceVersion, labels,
    deletionTimestamp; node and the containers' requests; phase, reason, startTime, the
    PodScheduled and DisruptionTarget conditions, the first container's state). A cached pod is
    then about a sixth of the parsed object (managedFields, the full spec and status dropped)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    kept_spec: Obj = {"containers": [
        {"resources": {"requests": (c.get("resources") or {}).get("requests") or {}}}
        for c in spec.get("containers") or []]}
    if spec.get("nodeName"):
        kept_spec["nodeName"] = spec["nodeName"]
    kept_status: Obj = {k: status[k] for k in ("phase", "reason", "startTime") if k in status}
    kept_conditions = [c for c in status.get("conditions") or [] if c.get("type") in POD_CONDITIONS_KEPT]
    if kept_conditions:
        kept_status["conditions"] = kept_conditions
    first = next(iter(status.get("containerStatuses") or []), None)
    if first is not None:
        kept_status["containerStatuses"] = [{"state": first.get("state") or {}}]
    return {"metadata": {k: meta[k] for k in POD_META_KEPT if k in meta}, "spec": kept_spec,
            "status": kept_status}


def trim_node(node: Obj) -> Obj:
    """A Node without ``managedFields`` and the image list (large, never read)."""
    meta = {k: v for k, v in node.get("metadata", {}).items() if k != "managedFields"}
    status = {k: v for k, v in (node.get("status") or {}).items() if k != "images"}
    return {**node, "metadata": meta, "status": status}


def trim_meta(obj: Obj) -> Obj:
    """Any object without ``managedFields`` (Leases)."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def job_of(pod: Obj) -> str | None:
    """Index function: the job id label of a pod."""
    return (pod["metadata"].get("labels") or {}).get(LABEL_JOB) or None


def node_of(pod: Obj) -> str | None:
    """Index function: the node a pod is bound to."""
    return (pod.get("spec") or {}).get("nodeName") or None
