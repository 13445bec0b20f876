"""The simulated kubelet against the real control plane, at upstream defaults: the Lease is the
heartbeat (renewed every 10 s, duration 40 s) and keeps the Node Ready under the stock 50 s grace
period; ``kubectl logs`` reaches the kubelet's HTTPS log API through the API server; pods outlive
the kubelet (a restarted kubelet adopts them) but not the machine; failed containers carry their
last log lines as termination message."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import ssl
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devcluster import nodes
from devcluster.build import find_kubectl
from devcluster.pki import Pki
from tests.k8s.cluster import NODE_NAMES, DevCluster
from workers import pod_runtime

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]

T = TypeVar("T")
Obj = dict[str, Any]


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> Iterator[None]:
    """Overrides the asyncio leak check: these tests are synchronous (kubectl and /proc)."""
    yield


def kubectl(cluster: DevCluster, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(find_kubectl()), "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out


def get(cluster: DevCluster, *args: str) -> Obj:
    obj: Obj = json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)
    return obj


def eventually(check: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def parse_time(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


@pytest.fixture
def ns(cluster: DevCluster) -> Iterator[str]:
    name = f"jobq-kubelet-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", name)
    eventually(lambda: kubectl(cluster, "get", "sa", "default", "-n", name, check=False).returncode == 0,
               timeout=30, what="the namespace's default service account")
    yield name
    kubectl(cluster, "delete", "namespace", name, "--wait=false", check=False)


def create_pod(cluster: DevCluster, ns: str, name: str, node: str, script: str, *,
               policy: str = "FallbackToLogsOnError", memory_limit: str | None = None) -> None:
    """A pod bound to ``node`` that runs ``sh -c script``."""
    container: Obj = {"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                      "terminationMessagePolicy": policy}
    if memory_limit:
        container["resources"] = {"limits": {"memory": memory_limit}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                    "containers": [container]}}
    kubectl(cluster, "create", "-f", "-", stdin=json.dumps(pod))


def wait_started(cluster: DevCluster, ns: str, name: str) -> Obj:
    """The pod once the kubelet has started it (and posted containerStatuses)."""
    def check() -> Obj | None:
        pod = get(cluster, "pod", "-n", ns, name)
        return pod if (pod.get("status") or {}).get("containerStatuses") else None
    return eventually(check, timeout=60, what=f"pod {name} started by the kubelet")


def run_pod(cluster: DevCluster, ns: str, name: str, node: str, script: str, **kwargs: Any) -> Obj:
    create_pod(cluster, ns, name, node, script, **kwargs)
    return wait_started(cluster, ns, name)


def terminated(cluster: DevCluster, ns: str, name: str, *, timeout: float = 60) -> Obj:
    """The container's ``state.terminated`` once the pod is Succeeded or Failed."""
    def check() -> Obj | None:
        status = get(cluster, "pod", "-n", ns, name)["status"]
        if status.get("phase") not in ("Succeeded", "Failed"):
            return None
        state: Obj = status["containerStatuses"][0]["state"]["terminated"]
        return {**state, "phase": status["phase"]}
    return eventually(check, timeout=timeout, what=f"pod {name} terminal")


def record_of(cluster: DevCluster, node: str, pod: Obj) -> pod_runtime.PodRecord:
    return pod_runtime.read_records(nodes.pods_dir(cluster.state_dir, node))[pod["metadata"]["uid"]]


def ready_condition(cluster: DevCluster, node: str) -> Obj:
    status = get(cluster, "node", node)["status"]
    cond: Obj = next(c for c in status["conditions"] if c["type"] == "Ready")
    return cond


def test_lease_is_the_heartbeat_at_stock_cadence(cluster: DevCluster) -> None:
    """Lease renewed about every 10 s with leaseDurationSeconds 40; the Node stays Ready for over
    60 s under the stock controller (grace 50 s) although its status is not re-posted."""
    node = NODE_NAMES[0]
    renewals: list[dt.datetime] = []
    heartbeats: set[str] = set()
    started_at = time.monotonic()
    while time.monotonic() - started_at < 65:
        lease = get(cluster, "lease", "-n", "kube-node-lease", node)
        assert lease["spec"]["leaseDurationSeconds"] == 40, lease["spec"]
        assert lease["spec"]["holderIdentity"] == node
        renewed = parse_time(lease["spec"]["renewTime"])
        if not renewals or renewed != renewals[-1]:
            renewals.append(renewed)
        ready = ready_condition(cluster, node)
        assert ready["status"] == "True", ready
        heartbeats.add(ready["lastHeartbeatTime"])
        time.sleep(2)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(renewals)]
    print(f"Lease renewals of {node} over 65 s: {len(renewals)}; gaps {[round(g, 2) for g in gaps]} "
          f"(median {statistics.median(gaps):.2f} s); Ready lastHeartbeatTime values: {sorted(heartbeats)}")
    assert len(gaps) >= 4, renewals
    assert 9.9 <= statistics.median(gaps) <= 11.0, gaps
    assert all(9.5 <= g <= 15.0 for g in gaps), gaps
    # The status is posted on change or every 5 min only: at most one report in this window.
    assert len(heartbeats) <= 2, heartbeats


def test_kubectl_logs_running_finished_and_follow(cluster: DevCluster, ns: str) -> None:
    node = NODE_NAMES[1]
    script = "echo start; i=0; while [ $i -lt 8 ]; do echo tick $i; i=$((i+1)); sleep 0.5; done; echo done"
    run_pod(cluster, ns, "talker", node, script)
    first = eventually(lambda: kubectl(cluster, "logs", "-n", ns, "talker").stdout, timeout=10,
                       what="logs of the running pod")
    assert first.startswith("start\n"), first
    assert get(cluster, "pod", "-n", ns, "talker")["status"]["phase"] == "Running"
    followed = kubectl(cluster, "logs", "-n", ns, "talker", "--follow", timeout=60).stdout
    assert followed == "start\n" + "".join(f"tick {i}\n" for i in range(8)) + "done\n", followed
    state = terminated(cluster, ns, "talker")
    assert state["phase"] == "Succeeded" and state["exitCode"] == 0 and "message" not in state, state
    # Still readable once the container has ended, with tailLines and limitBytes.
    assert kubectl(cluster, "logs", "-n", ns, "talker").stdout == followed
    assert kubectl(cluster, "logs", "-n", ns, "talker", "--tail=2").stdout == "tick 7\ndone\n"
    assert kubectl(cluster, "logs", "-n", ns, "talker", "--limit-bytes=3").stdout == "sta"
    assert kubectl(cluster, "logs", "-n", ns, "talker", "--since=1h").stdout == followed
    wrong = kubectl(cluster, "logs", "-n", ns, "talker", "-c", "nope", check=False)
    assert wrong.returncode != 0

    # The kubelet's own endpoint: the apiserver's kubelet-client identity is required.
    port = get(cluster, "node", node)["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    assert port > 0
    url = f"https://127.0.0.1:{port}/containerLogs/{ns}/talker/main?tailLines=1"
    pki = Pki.at(cluster.state_dir / "pki")

    def fetch(client: tuple[Path, Path] | None) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        if client:
            context.load_cert_chain(str(client[0]), str(client[1]))
        try:
            with urllib.request.urlopen(url, context=context, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    kubelet_client = pki.apiserver_kubelet_client
    assert fetch((kubelet_client.cert, kubelet_client.key)) == (200, "done\n")
    node_identity = (cluster.state_dir / "nodes" / f"{node}.crt", cluster.state_dir / "nodes" / f"{node}.key")
    assert fetch(node_identity)[0] == 403, "another node's (or any non-apiserver) identity is refused"
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        fetch(None)


def test_pods_survive_the_kubelet_and_are_adopted(cluster: DevCluster, ns: str) -> None:
    """SIGKILL of the kubelet alone: pods keep running. The restarted kubelet reports a pod that
    ended meanwhile from its exit file, adopts one still running (logs, final phase), and kills
    the process of a pod force-deleted while it was down."""
    node = NODE_NAMES[1]
    create_pod(cluster, ns, "ends-meanwhile", node, "echo a-start; sleep 8; echo a-end; exit 7")
    create_pod(cluster, ns, "outlives", node, "echo b-start; sleep 30; echo b-end")
    create_pod(cluster, ns, "orphan", node, "sleep 300")
    pods = [wait_started(cluster, ns, name) for name in ("ends-meanwhile", "outlives", "orphan")]
    ends_meanwhile = pods[0]
    recs = {p["metadata"]["name"]: record_of(cluster, node, p) for p in pods}
    started_at = ends_meanwhile["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]

    cluster.kill_kubelet(node)
    assert all(r.alive for r in recs.values()), "pods died with their kubelet"
    eventually(lambda: pod_runtime.read_exit_file(Path(recs["ends-meanwhile"].exit_file)) == 7, timeout=20,
               what="the exit code of the pod that ended while its kubelet was dead")
    assert recs["outlives"].alive and recs["orphan"].alive
    kubectl(cluster, "delete", "pod", "-n", ns, "orphan", "--force", "--grace-period=0")

    restarted = time.monotonic()
    cluster.heal()
    state = terminated(cluster, ns, "ends-meanwhile")
    assert state["phase"] == "Failed" and state["exitCode"] == 7 and state["reason"] == "Error", state
    assert state["startedAt"] == started_at and "a-end" in state["message"], state
    eventually(lambda: not recs["orphan"].alive, timeout=20, what="the force-deleted pod's process killed")
    assert get(cluster, "pod", "-n", ns, "outlives")["status"]["phase"] == "Running"
    assert recs["outlives"].alive
    assert kubectl(cluster, "logs", "-n", ns, "outlives").stdout.startswith("b-start\n")
    state = terminated(cluster, ns, "outlives", timeout=90)
    assert state["phase"] == "Succeeded" and state["exitCode"] == 0, state
    assert kubectl(cluster, "logs", "-n", ns, "outlives").stdout == "b-start\nb-end\n"
    log = Path(nodes.load(cluster.state_dir)[node].log).read_text()
    assert '"pod_adopted"' in log and '"orphan_pod_killed"' in log
    print(f"kubelet restart: adopted pod finished {time.monotonic() - restarted:.1f}s after the restart")


def test_failed_containers_carry_their_last_log_lines(cluster: DevCluster, ns: str) -> None:
    node = NODE_NAMES[2]
    lines = "i=0; while [ $i -lt 100 ]; do echo line $i; i=$((i+1)); done"
    run_pod(cluster, ns, "fails", node, f"{lines}; exit 1")
    run_pod(cluster, ns, "file-policy", node, f"{lines}; exit 1", policy="File")
    run_pod(cluster, ns, "succeeds", node, f"{lines}; exit 0")
    hog = "print('allocating', flush=True); x = b'x' * (400 * 2**20); import time; time.sleep(30)"
    run_pod(cluster, ns, "oom", node, f"echo before; exec {sys.executable} -c \"{hog}\"", memory_limit="64Mi")

    failed = terminated(cluster, ns, "fails")
    assert failed["phase"] == "Failed" and failed["exitCode"] == 1 and failed["reason"] == "Error"
    message = failed["message"]
    assert message.splitlines() == [f"line {i}" for i in range(20, 100)], message  # the last 80 lines
    assert len(message.encode()) <= 2048
    assert "message" not in terminated(cluster, ns, "file-policy"), "policy File: no fallback to logs"
    assert "message" not in terminated(cluster, ns, "succeeds"), "only failed containers"
    oom = terminated(cluster, ns, "oom")
    assert oom["reason"] == "OOMKilled" and oom["exitCode"] == 137, oom
    assert oom["message"].splitlines() == ["before", "allocating"], oom


def test_kill_node_kills_its_pods(cluster: DevCluster, ns: str) -> None:
    """Machine death: the kubelet and its pods die; the stock controller marks the Node NotReady
    after its 50 s grace period; the restarted kubelet is a new boot and reports the lost pod."""
    node = NODE_NAMES[0]
    pod = run_pod(cluster, ns, "doomed", node, "sleep 300")
    rec = record_of(cluster, node, pod)
    boot = get(cluster, "node", node)["status"]["nodeInfo"]["bootID"]
    killed = time.monotonic()
    cluster.kill(node)
    eventually(lambda: not rec.alive, timeout=5, what="the pod's process killed with its node", every=0.05)
    not_ready = eventually(lambda: ready_condition(cluster, node)["status"] != "True" or None, timeout=100,
                           what="the node lifecycle controller's NotReady", every=0.5)
    after = time.monotonic() - killed
    print(f"kill_node at stock settings: Node NotReady after {after:.1f}s")
    assert not_ready and 35 <= after <= 100, after
    assert ready_condition(cluster, node)["reason"] == "NodeStatusUnknown"
    cluster.heal()
    state = terminated(cluster, ns, "doomed")
    assert state["phase"] == "Failed" and state["reason"] == "ContainerStatusUnknown", state
    assert get(cluster, "node", node)["status"]["nodeInfo"]["bootID"] != boot, "a dead machine reboots"
