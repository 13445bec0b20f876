"""The simulated kubelet's local parts without a cluster: pods that outlive their agent (exit
file, adoption by pid + start time), log reading for ``/containerLogs``, node status comparison."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from workers import kubelet, pod_runtime
from workers.kubelet import logserver, node, pod_state


async def test_detached_pod_records_its_exit_code(tmp_path: Path) -> None:
    exit_file = tmp_path / "pod.exit"
    proc = pod_runtime.spawn_detached(["sh", "-c", "echo hello; exit 7"], env=dict(os.environ),
                                      log_path=tmp_path / "pod.log", exit_file=exit_file)
    assert pod_runtime.exit_code(await pod_runtime.wait_exit(proc)) == 7
    assert pod_runtime.read_exit_file(exit_file) == 7
    assert (tmp_path / "pod.log").read_text() == "hello\n"


async def test_detached_pod_handles_sigterm_itself(tmp_path: Path) -> None:
    """SIGTERM to the group reaches the command, which exits with its own code; the wrapper waits
    for it and records that code (it does not die of the SIGTERM itself)."""
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: (print('bye', flush=True), sys.exit(3)))\n"
              "print('up', flush=True)\n"
              "time.sleep(30)\n")
    exit_file = tmp_path / "pod.exit"
    proc = pod_runtime.spawn_detached([sys.executable, "-c", script], env=dict(os.environ),
                                      log_path=tmp_path / "pod.log", exit_file=exit_file)
    ticks = pod_runtime.start_ticks(proc.pid)
    assert ticks is not None
    for _ in range(100):
        if "up" in (tmp_path / "pod.log").read_text():
            break
        await asyncio.sleep(0.05)
    waiter = asyncio.create_task(pod_runtime.wait_exit(proc))
    await pod_runtime.terminate_group(proc.pid, ticks, grace_s=5)
    assert pod_runtime.exit_code(await waiter) == 3
    assert pod_runtime.read_exit_file(exit_file) == 3
    assert (tmp_path / "pod.log").read_text() == "up\nbye\n"


async def test_sigkill_leaves_no_exit_file_and_a_missing_command_fails_at_start(tmp_path: Path) -> None:
    exit_file = tmp_path / "pod.exit"
    proc = pod_runtime.spawn_detached(["sleep", "30"], env=dict(os.environ), log_path=tmp_path / "pod.log",
                                      exit_file=exit_file)
    pod_runtime.signal_group(proc.pid, signal.SIGKILL)
    assert pod_runtime.exit_code(await pod_runtime.wait_exit(proc)) == 137
    assert pod_runtime.read_exit_file(exit_file) is None
    with pytest.raises(FileNotFoundError):
        pod_runtime.spawn_detached(["no-such-command-jobq"], env=dict(os.environ),
                                   log_path=tmp_path / "x.log", exit_file=tmp_path / "x.exit")


async def test_pod_outlives_its_starter_and_is_found_by_its_record(tmp_path: Path) -> None:
    """A pod started by a process that then dies keeps running; its record (pid + start time)
    finds it, and kill_recorded kills the whole group."""
    starter = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from workers import pod_runtime\n"
        "d = Path(sys.argv[1])\n"
        "p = pod_runtime.spawn_detached(['sh', '-c', 'sleep 30 & sleep 30'], env=dict(os.environ),\n"
        "                               log_path=d / 'p.log', exit_file=d / 'u1.exit')\n"
        "pod_runtime.PodRecord(uid='u1', namespace='ns', name='p', container='c', image='', job_id='',\n"
        "    attempt=0, pid=p.pid, start_ticks=pod_runtime.start_ticks(p.pid) or 0, log=str(d / 'p.log'),\n"
        "    log_offset=0, exit_file=str(d / 'u1.exit'), started_at='').save(d)\n"
        "os._exit(0)\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", starter, str(tmp_path),
                                                cwd=Path(__file__).parents[2])
    assert await proc.wait() == 0
    [record] = pod_runtime.read_records(tmp_path).values()
    assert record.alive, "the pod died with the process that started it"
    assert not pod_runtime.alive(record.pid, record.start_ticks + 1), "start time guards against pid reuse"
    assert pod_runtime.kill_recorded(tmp_path) == 1
    assert await pod_runtime.wait_gone(record.pid, record.start_ticks, timeout_s=5, poll_s=0.05)
    pod_runtime.PodRecord.remove(tmp_path, "u1")
    assert not pod_runtime.read_records(tmp_path)


def test_tail_start_and_line_start(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"old pod\n" + b"".join(f"line {i}\n".encode() for i in range(1000)))
    lo, hi = len(b"old pod\n"), log.stat().st_size
    data = log.read_bytes()
    assert data[kubelet.tail_start(log, 2, lo=lo, hi=hi):] == b"line 998\nline 999\n"
    assert kubelet.tail_start(log, 0, lo=lo, hi=hi) == hi
    assert kubelet.tail_start(log, 5000, lo=lo, hi=hi) == lo, "never before this pod's first byte"
    assert data[kubelet.tail_start(log, 1, lo=lo, hi=hi - 1):hi - 1] == b"line 999", "no final newline"
    assert data[logserver._line_start(log, lo + 3, lo=lo):].startswith(b"line 1\n")
    assert logserver._line_start(log, lo + 7, lo=lo) == lo + 7


def test_log_options() -> None:
    opts = kubelet.LogOptions.parse({"follow": "true", "tailLines": "10", "limitBytes": "5",
                                     "sinceTime": "2026-01-02T03:04:05Z", "timestamps": "true"})
    assert opts.follow and opts.tail_lines == 10 and opts.limit_bytes == 5 and opts.since_time is not None
    with pytest.raises(ValueError):
        kubelet.LogOptions.parse({"tailLines": "-1"})


def test_node_status_unchanged_when_the_server_respells_quantities() -> None:
    """The API server canonicalises quantities (4000m -> 4); that is no change to report."""
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "m",
             "lastHeartbeatTime": "2026-01-01T00:00:10Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    ours: dict[str, Any] = {"capacity": {"cpu": "4", "memory": "8589934592", "pods": "110"},
                            "conditions": [ready], "nodeInfo": {"bootID": "b"},
                            "daemonEndpoints": {"kubeletEndpoint": {"Port": 1}}}
    server: dict[str, Any] = {**ours, "capacity": {"cpu": "4000m", "memory": "8Gi", "pods": "110"},
                              "conditions": [{**ready, "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
                              "nodeInfo": {"bootID": "b", "kubeProxyVersion": ""}}
    keys = ["bootID"]
    assert node._status_view(ours, keys) == node._status_view(server, keys)
    unknown = {**server, "conditions": [{**server["conditions"][0], "status": "Unknown"}]}
    assert node._status_view(ours, keys) != node._status_view(unknown, keys)
    moved = {**server, "daemonEndpoints": {"kubeletEndpoint": {"Port": 2}}}
    assert node._status_view(ours, keys) != node._status_view(moved, keys)


def test_settings_follow_the_kubelet_defaults() -> None:
    from broker import contract

    s = kubelet.KubeletSettings(name="n", kubeconfig="", capacity=contract.Resources())
    assert (s.lease_duration_s, s.renew_interval_s) == (40, 10.0)
    assert (s.node_status_update_frequency_s, s.node_status_report_frequency_s) == (10.0, 300.0)
    fast = kubelet.KubeletSettings(name="n", kubeconfig="", capacity=contract.Resources(), lease_duration_s=8)
    assert fast.renew_interval_s == 2.0


async def test_a_relist_kills_pods_that_are_no_longer_listed(tmp_path: Path) -> None:
    """After a (re)list, a pod this agent runs whose UID is not listed (force-deleted while the
    watch was down) is killed, and so is the process of a record an earlier agent left."""
    import datetime as dt

    from kubernetes_asyncio import client as k8s

    from broker import contract

    settings = kubelet.KubeletSettings(name="n", kubeconfig="", capacity=contract.Resources(),
                                       work_dir=tmp_path)
    api = k8s.ApiClient()
    try:
        agent = kubelet.Kubelet(api, settings).pods
        procs = {}
        for uid in ("listed", "gone", "earlier"):
            procs[uid] = pod_runtime.spawn_detached(
                ["sleep", "30"], env=dict(os.environ), log_path=settings.node_dir / f"{uid}.log",
                exit_file=settings.pods_dir / f"{uid}.exit")
            pod = pod_state._Pod(namespace="ns", name=uid, uid=uid, job_id="", attempt=0, image="",
                                 container="c", limit_bytes=None, pid=procs[uid].pid,
                                 start_ticks=pod_runtime.start_ticks(procs[uid].pid) or 0,
                                 log_path=settings.node_dir / f"{uid}.log", log_offset=0,
                                 exit_file=settings.pods_dir / f"{uid}.exit",
                                 started_at=dt.datetime.now(dt.UTC), process=procs[uid])
            pod.record().save(settings.pods_dir)
            if uid == "earlier":
                agent._records[uid] = pod.record()
            else:
                agent._pods[uid] = pod
        agent._reconcile_listing({"listed"})
        assert await asyncio.wait_for(pod_runtime.wait_exit(procs["earlier"]), 5) == -signal.SIGKILL
        gone = await asyncio.wait_for(pod_runtime.wait_exit(procs["gone"]), 5)
        assert pod_runtime.exit_code(gone) in (137, 143), gone  # SIGTERM, then SIGKILL at once (grace 0)
        await asyncio.gather(*agent._tasks)
        assert set(pod_runtime.read_records(settings.pods_dir)) == {"listed"}
        assert procs["listed"].poll() is None and set(agent._pods) == {"listed"}
    finally:
        for proc in procs.values():
            pod_runtime.signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        await api.close()
