"""The kubelet: its Node (``node``), its pods (``pods``) and its log server, run together until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from broker.k8sapi import ApiError
from workers.kubelet.logserver import LogServer
from workers.kubelet.node import NodeReporter
from workers.kubelet.pods import PodManager
from workers.kubelet.settings import JITTER, LEASE_BACKOFF_S, KubeletSettings

log = structlog.get_logger("jobq.kubelet")


def _jittered(interval_s: float) -> float:
    return interval_s * (1 + random.uniform(0, JITTER))  # timing jitter, not security


class Kubelet:
    def __init__(self, api: k8s.ApiClient, settings: KubeletSettings) -> None:
        self._s = settings
        self.node = NodeReporter(api, settings)
        self.pods = PodManager(api, settings)

    async def run(self, stop: asyncio.Event) -> None:
        self.pods.load_records()
        server = LogServer(self.pods, self._s)
        self.node.port = await server.start()
        backoff = 0.2
        try:
            while True:
                try:
                    await self.node.register()
                    break
                except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("node_register_failed", node=self._s.name, error=str(exc), retry_in_s=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            log.info("node_started", node=self._s.name, cpu=self._s.capacity.cpu,
                     memory=self._s.capacity.memory, gpu=self._s.capacity.gpu, pid=os.getpid(),
                     log_port=self.node.port, lease_renew_s=self._s.renew_interval_s,
                     status_update_s=self._s.node_status_update_frequency_s)
            node, pods = self.node, self.pods
            loops = [asyncio.create_task(self._every(self._s.renew_interval_s, node.renew_lease, "lease")),
                     asyncio.create_task(self._every(self._s.node_status_update_frequency_s,
                                                     node.sync_node_status, "status")),
                     asyncio.create_task(self._every(1.0, pods.enforce_memory, "memory")),
                     asyncio.create_task(pods.watch_pods())]
            try:
                await stop.wait()
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                await self.shutdown()
        finally:
            await server.stop()

    async def shutdown(self) -> None:
        """Stop of the agent: its containers keep running (as with a real container runtime)."""
        left = await self.pods.shutdown()
        log.info("node_stopped", node=self._s.name, pods_left_running=left)

    async def _every(self, interval_s: float, action: Callable[[], Awaitable[Any]], what: str,
                     *, max_backoff_s: float = LEASE_BACKOFF_S[1]) -> None:
        """``action`` every ``interval_s`` (+ jitter, measured from its end); after a failure
        retry in 0.2 s, doubling up to ``max_backoff_s`` (never longer than ``interval_s``)."""
        failures = 0
        while True:
            try:
                await action()
                failures = 0
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                failures += 1
                log.warning("kubelet_call_failed", node=self._s.name, what=what, error=str(exc),
                            failures=failures)
            if failures == 0:
                await asyncio.sleep(_jittered(interval_s))
            else:
                backoff = LEASE_BACKOFF_S[0] * 2 ** (failures - 1)
                await asyncio.sleep(min(backoff, max_backoff_s, interval_s))


async def api_client(kubeconfig: str) -> k8s.ApiClient:
    """An ApiClient from a kubeconfig file, or from the in-cluster service account."""
    if kubeconfig:
        return await k8s_config.new_client_from_config(config_file=kubeconfig)
    load_incluster: Any = k8s_config.load_incluster_config
    load_incluster()
    return k8s.ApiClient()


async def run_kubelet(settings: KubeletSettings, stop: asyncio.Event) -> None:
    api = await api_client(settings.kubeconfig)
    try:
        await Kubelet(api, settings).run(stop)
    finally:
        with contextlib.suppress(Exception):
            await api.close()
