"""TLS on the dev cluster: the dispatcher (Kubernetes backend) and the task pods the simulated
kubelets run reach the stack's NATS over TLS, verified with the stack's CA."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from broker import contract
from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.integration.helpers import wait_running
from tests.integration.test_nats_tls import monitor
from tests.k8s.cluster import NODE_NAMES, DevCluster
from tests.k8s.test_k8s_e2e import kubectl

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]


async def pod_object(cluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    """The Pod as the API server has it (waiting for the dispatcher to create it)."""
    for _ in range(60):
        try:
            pod: dict[str, Any] = json.loads(
                kubectl(cluster, "get", "pod", "-n", namespace, name, "-o", "json")
            )
            return pod
        except subprocess.CalledProcessError:
            await asyncio.sleep(0.5)
    raise AssertionError(f"pod {name} never appeared")


async def test_a_job_completes_over_tls_on_the_real_control_plane(
    k8s_stack: Stack, k8s_client: JobqClient, cluster: DevCluster, namespace: str
) -> None:
    assert k8s_stack.nats_url.startswith("tls://") and k8s_stack.nats_ca
    handle = await k8s_client.submit(task="demo.sleep", args={"seconds": 3})
    await wait_running(k8s_client, [handle.id], count=1)
    pod = await pod_object(cluster, namespace, contract.pod_name(handle.id, 1))
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_NATS_URL] == k8s_stack.nats_url
    assert env[contract.ENV_NATS_CA] == k8s_stack.nats_ca
    result = await handle.result(timeout=120)
    assert result.node in NODE_NAMES
    closed = await monitor(k8s_stack, "connz", state="closed", limit="1024")
    runner = [c for c in closed["connections"] if c.get("name") == f"jobq-runner {handle.id}.1"]
    assert runner and all(c.get("tls_version") for c in runner), runner
