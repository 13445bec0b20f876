"""Chaos experiments on the Kubernetes backend, for real: Chaos Toolkit in the main thread, a jobq
stack on the Kubernetes backend in a background thread (chaos.runner), the shared control plane
with its simulated kubelets as the cluster under test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import runner
from tests.chaos.conftest import assert_passed
from tests.k8s.cluster import NODE_NAMES, DevCluster
from tests.k8s.conftest import k8s_env

pytestmark = [pytest.mark.k8s, pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> Iterator[None]:
    """Overrides the asyncio leak check: these tests are synchronous (Chaos Toolkit owns the run)."""
    yield


def run(name: str, tmp_path: Path, cluster: DevCluster, namespace: str) -> runner.Outcome:
    outcome = runner.run(
        name,
        journal_path=tmp_path / "journal.json",
        report_path=tmp_path / "report.html",
        data_dir=tmp_path / "jobq",
        stack_env=k8s_env(cluster, namespace),
        config_vars={"cluster_dir": str(cluster.state_dir)},
    )
    assert_passed(outcome.journal)
    assert outcome.passed, outcome.problems
    return outcome


def test_k8s_node_kill(tmp_path: Path, cluster: DevCluster, namespace: str) -> None:
    outcome = run("k8s-node-kill", tmp_path, cluster, namespace)
    [kill] = outcome.snapshot["disruptions"]
    assert kill["kind"] == "node_kill" and kill["target"] in NODE_NAMES and kill["pods"], kill
    assert "restarted_at" in kill, kill
    [recovery] = outcome.snapshot["recoveries"]
    assert recovery["affected_jobs"] >= 1 and 0 < recovery["seconds"] <= 10, recovery
    retries = next(
        r["output"] for r in outcome.journal["run"] if r["activity"]["name"] == "retries-by-reason"
    )
    assert retries.get("node_lost", 0) >= 1, retries
    assert kill["target"] in (tmp_path / "report.html").read_text()
    print(
        f"k8s-node-kill: killed {kill['target']} ({len(kill['pods'])} pods), recovery "
        f"{recovery['seconds']}s, retries {retries}, run {outcome.seconds}s"
    )


def test_k8s_node_drain(tmp_path: Path, cluster: DevCluster, namespace: str) -> None:
    outcome = run("k8s-node-drain", tmp_path, cluster, namespace)
    [drain] = outcome.snapshot["disruptions"]
    assert drain["kind"] == "node_drain" and drain["pods"] and "recovered_at" in drain, drain
    jobs = outcome.snapshot["jobs"]
    for ref in drain["pods"]:
        job_id, _, attempt = ref.rpartition("#")
        record = jobs[job_id]["record"]
        assert record["phase"] == "succeeded", record
        later = record["attempts"][int(attempt) :]
        assert later and all(a["node"] != drain["target"] for a in later), record["attempts"]
    # The rollback made the node schedulable again.
    node = json.loads(runner_kubectl(cluster, "get", "node", drain["target"], "-o", "json"))
    assert not node["spec"].get("unschedulable"), node["spec"]
    [recovery] = outcome.snapshot["recoveries"]
    print(
        f"k8s-node-drain: drained {drain['target']} via {drain['method']} ({len(drain['pods'])} pods), "
        f"recovery {recovery['seconds']}s, run {outcome.seconds}s"
    )


def runner_kubectl(cluster: DevCluster, *args: str) -> str:
    from chaos.k8s_actions import kubectl

    return kubectl({"kubeconfig": str(cluster.kubeconfig)}, *args)
