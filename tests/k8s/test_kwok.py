"""kwok against the session's control plane: 20 fake nodes, and jobq jobs Running on them.

kwok is built from its Go module through ``devcluster.kwok`` (cached like the control plane) and
manages only the Nodes this test creates (annotation selector). The fake nodes carry a NoSchedule
taint, so the other tests' pods never land on them; this test's jobs reach them the way an
operator steers GPU jobs to GPU nodes (``JOBQ_GPU_NODE_SELECTOR``, ``JOBQ_GPU_TOLERATIONS``; the
fake nodes advertise ``nvidia.com/gpu``). The dispatcher's node view (``GET /api/nodes``, served
from the backend's cache) must follow the pods as they come and go.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker import contract
from broker.embedded.stack import Stack
from devcluster import kwok
from devcluster.build import BuildError, find_kubectl
from tests.conftest import running_stack, submitter_client
from tests.k8s.cluster import DevCluster, k8s_env

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]  # a cold kwok build: ~2.5 min

NODES = 20
JOBS = 5
SELECTOR = "jobq-test=kwok"


def kubectl(cluster: DevCluster, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [str(find_kubectl()), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


@pytest.fixture
def fake_nodes(cluster: DevCluster, tmp_path: Path) -> Iterator[list[str]]:
    """kwok running, with NODES tainted fake nodes Ready; all removed afterwards."""
    try:
        binary = kwok.ensure_kwok()
    except BuildError as exc:
        message = f"kwok could not be built: {str(exc).splitlines()[0]}"
        if os.environ.get("JOBQ_REQUIRE_K8S") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    proc = kwok.start_kwok(cluster.kubeconfig, work_dir=tmp_path / "kwok", binary=binary)
    names = list(kwok.node_names(NODES, prefix="kwok-t"))
    manifests = []
    for name in names:
        node: Any = kwok.node_manifest(name, cpu="4", memory="8Gi", taint=True)
        node["metadata"]["labels"]["jobq-test"] = "kwok"
        for key in ("allocatable", "capacity"):
            node["status"][key]["nvidia.com/gpu"] = "8"
        manifests.append(node)
    try:
        kubectl(
            cluster,
            "create",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
        )
        kubectl(cluster, "wait", "--for=condition=Ready", "node", "-l", SELECTOR, "--timeout=60s")
        yield names
    finally:
        subprocess.run(
            [
                str(find_kubectl()),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "delete",
                "node",
                "-l",
                SELECTOR,
                "--wait=false",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        kwok.stop_kwok(proc)


async def nodes_view(stack: Stack) -> dict[str, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers=stack.http_headers) as http,
        http.get(f"{stack.http_url}api/nodes") as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    return {n["name"]: n for n in body["nodes"]}


async def until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


async def test_jobs_run_on_kwok_nodes(
    cluster: DevCluster, fake_nodes: list[str], tmp_path: Path, namespace: str
) -> None:
    env = {
        **k8s_env(cluster, namespace),
        "JOBQ_GPU_NODE_SELECTOR": SELECTOR,
        "JOBQ_GPU_TOLERATIONS": json.dumps(
            [{"key": kwok.NODE_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}]
        ),
    }
    async with running_stack(tmp_path, nodes=0, env=env) as stack, submitter_client(stack) as client:
        view = await until("the dispatcher to see the fake nodes", lambda: _all_ready(stack, fake_nodes))
        assert all(view[n]["pods"] == 0 for n in fake_nodes)
        handles = [
            await client.submit(command=["sleep", "600"], resources={"cpu": 0.5, "memory": "64Mi", "gpu": 1})
            for _ in range(JOBS)
        ]

        async def all_running() -> list[contract.JobRecord] | None:
            records = [await client.get(h.id) for h in handles]
            if all(
                r is not None
                and r.phase == contract.JobPhase.RUNNING
                and r.current is not None
                and r.current.state == contract.AttemptState.RUNNING
                for r in records
            ):
                return [r for r in records if r is not None]
            return None

        records = await until("every job Running", all_running)
        placed = [r.current.node for r in records if r.current is not None]
        assert set(placed) <= set(fake_nodes), placed

        # The dispatcher saw every pod Running, so its node view (the same cache) counts them now:
        # no waiting here, a view that lags behind its own pod cache is the bug this looks for.
        view = await nodes_view(stack)
        assert sum(view[n]["pods"] for n in fake_nodes) == JOBS
        assert sum(view[n]["allocated_cpu"] for n in fake_nodes) == pytest.approx(0.5 * JOBS)
        for node in set(placed):
            assert view[node]["pods"] == placed.count(node)

        for h in handles:
            await client.cancel(h.id)

        async def released() -> bool:
            view = await nodes_view(stack)
            return sum(view[n]["pods"] for n in fake_nodes) == 0

        await until("the pods to be gone from the node view", released, timeout=30)


async def _all_ready(stack: Stack, names: list[str]) -> dict[str, dict[str, Any]] | None:
    view = await nodes_view(stack)
    return view if all(n in view and view[n]["ready"] for n in names) else None
