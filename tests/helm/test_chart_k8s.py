"""The chart on the real test control plane (Kubernetes v1.36.3 built from source): applied with
``kubectl apply --server-side``, RBAC checked by the API server's own authorizer, and the dispatcher
run with nothing but the chart's ServiceAccount token completing the demo.

The session's cluster is the one tests/k8s and tests/contract share (one control plane and three
simulated kubelets per test run, on two cores). The chart's own pods get a nodeSelector no node
matches, so the kubelets never run them: what is tested is that the API server admits them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

from broker import contract
from broker.backends import k8s_objects
from tests.helm.conftest import Manifest, kubectl, render, say
from tests.k8s.cluster import DevCluster, shared_cluster

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]

NEVER_SCHEDULED = {
    "dispatcher.nodeSelector.jobq\\.dev/test-unschedulable": "str:true",
    "nats.bundled.nodeSelector.jobq\\.dev/test-unschedulable": "str:true",
}
ALL_OPTIONS = {
    "nats.mode": "bundled",
    "serviceMonitor.enabled": "true",
    "grafanaDashboard.enabled": "true",
    "networkPolicy.enabled": "true",
    "nats.auth.userSecret.name": "nats-auth",
    "http.tokenSecret.name": "jobq-http",
    "dispatcher.queueLimits.gpu": "2",
}

# A stand-in for the Prometheus Operator's CRD, so that the API server can accept a ServiceMonitor.
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    jobs_namespace: str
    manifests: list[Manifest]
    kubeconfig: Path

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


@pytest.fixture(scope="session")
def cluster() -> DevCluster:
    return shared_cluster()


def apply(kubeconfig: Path, manifests: list[Manifest]) -> subprocess.CompletedProcess[str]:
    return kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--field-manager=jobq-helm-test",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(manifests),
    )


def install(helm: Path, cluster: DevCluster, values: dict[str, str]) -> Release:
    """Render the chart and apply it into a fresh release namespace (Pod Security: restricted)."""
    suffix = uuid.uuid4().hex[:6]
    release = Release(
        name="jobq",
        namespace=f"jobq-helm-{suffix}",
        jobs_namespace=f"jobq-helm-jobs-{suffix}",
        manifests=[],
        kubeconfig=cluster.kubeconfig,
    )
    manifests = render(
        helm,
        {**values, **NEVER_SCHEDULED, "backend.namespace": release.jobs_namespace},
        release=release.name,
        namespace=release.namespace,
    )
    kubectl(cluster.kubeconfig, "create", "namespace", release.namespace)
    kubectl(
        cluster.kubeconfig,
        "label",
        "namespace",
        release.namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    out = apply(cluster.kubeconfig, manifests)
    assert "Warning" not in out.stderr, out.stderr  # e.g. a Pod Security warning on a pod template
    return Release(release.name, release.namespace, release.jobs_namespace, manifests, cluster.kubeconfig)


def uninstall(release: Release) -> None:
    """Delete what was applied (cluster-scoped RBAC and the kube-node-lease Role included)."""
    kubectl(
        release.kubeconfig,
        "delete",
        "--ignore-not-found",
        "--wait=false",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(release.manifests),
        check=False,
    )
    kubectl(release.kubeconfig, "delete", "namespace", release.namespace, "--wait=false", check=False)


@pytest.fixture(scope="session")
def release(helm: Path, cluster: DevCluster) -> Iterator[Release]:
    """The chart with its default values (external NATS)."""
    started = time.monotonic()
    installed = install(helm, cluster, {})
    say(f"default release applied in {time.monotonic() - started:.1f}s")
    yield installed
    uninstall(installed)


def count_pods(kubeconfig: Path, namespace: str, selector: str) -> int:
    out = kubectl(kubeconfig, "get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return len(json.loads(out.stdout)["items"])


def wait_pods(kubeconfig: Path, namespace: str, selector: str, want: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (have := count_pods(kubeconfig, namespace, selector)) < want:
        if time.monotonic() > deadline:
            events = kubectl(kubeconfig, "get", "events", "-n", namespace, check=False).stdout
            raise AssertionError(f"{have}/{want} pods ({selector}) after {timeout}s:\n{events}")
        time.sleep(0.5)


def test_default_release_is_accepted(release: Release) -> None:
    for doc in release.manifests:
        ns = doc["metadata"].get("namespace")
        args = [
            "get",
            doc["kind"].lower(),
            doc["metadata"]["name"],
            "-o",
            "name",
            *(["-n", ns] if ns else []),
        ]
        kubectl(release.kubeconfig, *args)
    # The ReplicaSet controller created both dispatcher pods under Pod Security "restricted".
    wait_pods(release.kubeconfig, release.namespace, "app.kubernetes.io/component=dispatcher", 2)
    ns = json.loads(
        kubectl(release.kubeconfig, "get", "namespace", release.jobs_namespace, "-o", "json").stdout
    )
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_option_is_accepted(helm: Path, cluster: DevCluster) -> None:
    apply(cluster.kubeconfig, [SERVICE_MONITOR_CRD])
    kubectl(
        cluster.kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
    )
    installed = install(helm, cluster, ALL_OPTIONS)
    try:
        kinds = {d["kind"] for d in installed.manifests}
        assert {"StatefulSet", "ServiceMonitor", "NetworkPolicy", "ConfigMap"} <= kinds
        kubectl(cluster.kubeconfig, "get", "servicemonitor", "jobq", "-n", installed.namespace)
        # StatefulSet pods (and their JetStream volume claims) are admitted under "restricted" too.
        wait_pods(cluster.kubeconfig, installed.namespace, "app.kubernetes.io/component=nats", 3)
        pvcs = json.loads(
            kubectl(cluster.kubeconfig, "get", "pvc", "-n", installed.namespace, "-o", "json").stdout
        )
        assert len(pvcs["items"]) == 3
    finally:
        uninstall(installed)


def can_i(release: Release, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else []
    # "pods/exec" would read as the pod named "exec": subresources go in --subresource.
    resource, _, sub = resource.partition("/")
    where += [f"--subresource={sub}"] if sub else []
    out = kubectl(
        release.kubeconfig,
        "auth",
        "can-i",
        verb,
        resource,
        *where,
        "--as",
        release.service_account,
        check=False,
    )
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def needed(release: Release) -> list[tuple[str, str, str | None]]:
    jobs = release.jobs_namespace
    return [
        ("create", "pods", jobs),
        ("delete", "pods", jobs),
        ("list", "pods", jobs),
        ("watch", "pods", jobs),
        ("get", "pods/log", jobs),
        ("get", "nodes", None),
        ("list", "nodes", None),
        ("watch", "nodes", None),
        ("list", "leases.coordination.k8s.io", "kube-node-lease"),
        ("watch", "leases.coordination.k8s.io", "kube-node-lease"),
    ]


def forbidden(release: Release) -> list[tuple[str, str, str | None]]:
    jobs, own = release.jobs_namespace, release.namespace
    return [
        ("get", "secrets", jobs),
        ("list", "secrets", jobs),
        ("watch", "secrets", jobs),
        ("get", "secrets", own),
        ("list", "secrets", own),
        ("list", "secrets", None),
        ("create", "pods", "default"),
        ("create", "pods", own),
        ("create", "pods", "kube-system"),
        ("list", "pods", "default"),
        ("get", "pods", "kube-system"),
        ("delete", "pods", "default"),
        ("delete", "nodes", None),
        ("patch", "nodes", None),
        ("update", "nodes", None),
        ("create", "nodes", None),
        ("update", "pods", jobs),
        ("patch", "pods", jobs),
        ("update", "pods/status", jobs),
        ("patch", "pods/status", jobs),
        ("create", "pods/exec", jobs),
        ("create", "pods/eviction", jobs),
        ("get", "pods/log", "default"),
        ("get", "pods/log", own),
        ("create", "events", jobs),
        ("patch", "events", jobs),
        ("create", "leases.coordination.k8s.io", "kube-node-lease"),
        ("update", "leases.coordination.k8s.io", "kube-node-lease"),
        ("delete", "leases.coordination.k8s.io", "kube-node-lease"),
        ("list", "leases.coordination.k8s.io", own),
        ("create", "namespaces", None),
        ("delete", "namespaces", None),
        ("get", "configmaps", own),
        ("create", "roles.rbac.authorization.k8s.io", jobs),
        ("create", "rolebindings.rbac.authorization.k8s.io", jobs),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        ("*", "*", None),
        ("*", "*", jobs),
        ("*", "pods", jobs),
        ("*", "nodes", None),
        ("get", "*", jobs),
    ]


def test_rbac_allows_what_the_dispatcher_calls(release: Release) -> None:
    denied = [check for check in needed(release) if not can_i(release, *check)]
    assert not denied, f"the API server denies the dispatcher: {denied}"


def test_rbac_denies_everything_else(release: Release) -> None:
    allowed = [check for check in forbidden(release) if can_i(release, *check)]
    assert not allowed, f"the API server allows: {allowed}"


# The operator's task pod defaults (JOBQ_POD_*, JOBQ_GPU_*): a pull secret, the GPU selector and
# tolerations, the NATS Secret as optional env and volume; "default" names the account explicitly.
POD_DEFAULTS: dict[str, Any] = {
    "service_account": "default",
    "image_pull_secrets": ("regcred",),
    "gpu_node_selector": {"nvidia.com/gpu.present": "true"},
    "gpu_tolerations": ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    "nats_secret": "jobq-pod-nats",
}


@pytest.mark.parametrize("defaults", [{}, POD_DEFAULTS], ids=["plain", "pod-defaults"])
def test_task_pods_pass_pod_security_as_the_service_account(
    release: Release, tmp_path: Path, defaults: dict[str, Any]
) -> None:
    """The pod the backend creates, created as the dispatcher's account, is admitted (restricted)."""
    spec = contract.PodSpec(
        name="job-helmcheck-1",
        job_id="helmcheck",
        attempt=1,
        queue="default",
        command=("jobq-runner",),
        env={"JOBQ_JOB_ID": "helmcheck"},
        resources=contract.Resources(cpu=0.5, memory="256Mi", gpu=1),
    )
    body = k8s_objects.pod_manifest(spec, namespace=release.jobs_namespace, image="jobq:0.1.0", **defaults)
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(body))
    deadline = time.monotonic() + 15  # a new namespace has no default ServiceAccount for ~1 s
    while True:
        out = kubectl(
            release.kubeconfig,
            "create",
            "--dry-run=server",
            "-f",
            str(path),
            "--as",
            release.service_account,
            check=False,
        )
        if out.returncode == 0 or "serviceaccount" not in out.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr


def service_account_kubeconfig(release: Release, path: Path) -> Path:
    """A kubeconfig with only a token minted for the chart's ServiceAccount (like in-cluster)."""
    token = kubectl(
        release.kubeconfig, "create", "token", release.name, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(release.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "jobq",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": cluster["server"],
                    "certificate-authority-data": cluster["certificate-authority-data"],
                },
            }
        ],
        "users": [{"name": "jobq", "user": {"token": token}}],
        "contexts": [{"name": "jobq", "context": {"cluster": "test", "user": "jobq"}}],
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def test_dispatcher_with_the_service_account_token_completes_the_demo(
    release: Release, cluster: DevCluster, tmp_path: Path
) -> None:
    cluster.heal()  # all three kubelets Ready, whatever an earlier test in the session killed
    kubeconfig = service_account_kubeconfig(release, tmp_path / "sa.kubeconfig")
    whoami = kubectl(kubeconfig, "auth", "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == release.service_account
    env = {
        **os.environ,
        "JOBQ_NAMESPACE": release.jobs_namespace,
        "JOBQ_HEARTBEAT_TIMEOUT_S": "30",
        "JOBQ_LOG_FORMAT": "json",
    }
    env.pop("JOBQ_KUBECONFIG", None)
    jobq = Path(sys.executable).parent / "jobq"
    started = time.monotonic()
    out = subprocess.run(
        [
            str(jobq),
            "demo",
            "--backend",
            "kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--jobs",
            "4",
            "--json",
            "--timeout",
            "240",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, (
        f"jobq demo failed ({out.returncode}) after {elapsed:.0f}s:\n{out.stderr[-4000:]}"
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["submitted"] >= 4 and summary["succeeded"] == summary["submitted"], summary
    assert not summary["lost"] and not summary["duplicate_results"], summary
    # The pods really ran on the cluster: the scheduler bound each job's pod in the jobs namespace.
    events = json.loads(
        kubectl(
            release.kubeconfig,
            "get",
            "events",
            "-n",
            release.jobs_namespace,
            "--field-selector=reason=Scheduled",
            "-o",
            "json",
        ).stdout
    )["items"]
    scheduled = {e["involvedObject"]["name"] for e in events}
    assert len(scheduled) >= summary["submitted"], scheduled
    # ...and nothing the dispatcher tried was refused.
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "demo").rglob("*.log"))
    refused = [line for line in logs.splitlines() if re.search(r"\b403\b|forbidden", line, re.IGNORECASE)]
    assert not refused, refused[:5]
    say(f"demo as {release.service_account}: {summary['succeeded']} jobs in {elapsed:.0f}s")
