"""Fixtures for tests against the real Kubernetes control plane (marker ``k8s``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.embedded.stack import Stack
from submitter.client import JobqClient
from tests.conftest import running_stack, submitter_client
from tests.k8s.cluster import DevCluster, k8s_env, shared_cluster


@pytest.fixture(scope="session")
def k8s_cluster() -> DevCluster:
    return shared_cluster()


@pytest.fixture
def cluster(k8s_cluster: DevCluster) -> Iterator[DevCluster]:
    """The shared cluster with all three nodes Ready (agents killed by a test are restarted)."""
    k8s_cluster.heal()
    yield k8s_cluster


@pytest.fixture
def namespace() -> str:
    return f"jobq-t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def k8s_stack(tmp_path: Path, cluster: DevCluster, namespace: str) -> AsyncIterator[Stack]:
    """NATS + one dispatcher on the Kubernetes backend; no local node agents."""
    async with running_stack(tmp_path, nodes=0, env=k8s_env(cluster, namespace)) as stack:
        yield stack


@pytest.fixture
async def k8s_client(k8s_stack: Stack) -> AsyncIterator[JobqClient]:
    async with submitter_client(k8s_stack) as c:
        yield c
