"""``up`` / ``down`` / ``status`` / ``kubeconfig`` / ``build`` for the dev cluster.

``up`` starts the control plane and N simulated kubelets (``workers.kubelet``), all detached,
and returns once every node is Ready. Node-failure handling is upstream's (kubelets renew their
Lease every 10 s; the controller's grace period is 50 s, tolerations 300 s) unless
``--fastest-safe-node-failure`` (``ControlPlaneConfig.fastest_safe``) or
``--node-monitor-grace-period`` say otherwise. Backs ``jobq dev-cluster ...`` and
``python -m devcluster ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devcluster import nodes
from devcluster.build import BuildError, ensure_binaries
from devcluster.controlplane import (
    ControlPlane,
    ControlPlaneConfig,
    ControlPlaneError,
    default_state_dir,
)
from devcluster.state import ClusterState

Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(1, count + 1)]


def up(state_dir: Path, *, node_count: int = 3, node_cpu: float = 4.0, node_memory: str = "8Gi",
       node_monitor_grace_period: str | None = None, fastest_safe: bool = False,
       say: Say = _stderr) -> ClusterState:
    """Start the control plane and ``node_count`` kubelet agents in the background; wait for Ready.

    Stock node-failure settings; ``fastest_safe``: ``ControlPlaneConfig.fastest_safe()``;
    ``node_monitor_grace_period`` overrides the grace period of either.
    """
    started = time.monotonic()
    config = ControlPlaneConfig.fastest_safe(state_dir=state_dir) if fastest_safe else ControlPlaneConfig(
        state_dir=state_dir)
    if node_monitor_grace_period:
        config = dataclasses.replace(config, node_monitor_grace_period=node_monitor_grace_period)
    plane = ControlPlane(config, progress=say)
    state = plane.start()
    names = node_names(node_count)
    try:
        for name in names:
            nodes.start_kubelet(plane.state_dir, nodes.NodeSpec(name, cpu=node_cpu, memory=node_memory))
        say(f"devcluster: started {node_count} kubelet agent(s); waiting for the nodes to be Ready")
        nodes.wait_ready(plane.state_dir, names, timeout_s=120)
    except BaseException:
        down(state_dir, say=say)
        raise
    say(f"devcluster: {node_count} node(s) Ready; cluster up in {time.monotonic() - started:.1f}s")
    return state


def down(state_dir: Path, *, say: Say = _stderr) -> bool:
    """Stop the kubelet agents and kill their pods, then the control plane. False if nothing ran."""
    stopped = nodes.stop_all(state_dir)
    if stopped:
        say(f"devcluster: stopped {stopped} kubelet agent(s)")
    return ControlPlane.stop_recorded(state_dir) or stopped > 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="jobq dev-cluster", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None, help="default: ./.jobq/dev-cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd_up = sub.add_parser("up", help="start a local cluster in the background")
    cmd_up.add_argument("--nodes", type=int, default=3)
    cmd_up.add_argument("--node-cpu", type=float, default=4.0)
    cmd_up.add_argument("--node-memory", default="8Gi")
    cmd_up.add_argument("--node-monitor-grace-period", default=None,
                        help="kube-controller-manager grace period (default: stock 50s)")
    cmd_up.add_argument("--fastest-safe-node-failure", action="store_true",
                        help="grace 20s, monitor period 1s, tolerations 1s, eviction 10/s "
                             "(ControlPlaneConfig.fastest_safe)")
    sub.add_parser("down", help="stop the cluster started by 'up'")
    sub.add_parser("status", help="show component and node liveness")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig's path")
    sub.add_parser("build", help="only build/locate the binaries")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir or default_state_dir()

    try:
        if args.command == "build":
            bins = ensure_binaries(progress=_stderr)
            for name, path in vars(bins).items():
                print(f"{name}: {path}")
        elif args.command == "up":
            state = up(state_dir, node_count=args.nodes, node_cpu=args.node_cpu, node_memory=args.node_memory,
                       node_monitor_grace_period=args.node_monitor_grace_period,
                       fastest_safe=args.fastest_safe_node_failure)
            print(f"export KUBECONFIG={state.kubeconfig}")
        elif args.command == "down":
            if not down(state_dir):
                _stderr(f"no dev cluster recorded in {state_dir.resolve()}")
        elif args.command == "kubeconfig":
            path = state_dir.resolve() / "kubeconfig"
            if ClusterState.load(state_dir.resolve()) is None or not path.is_file():
                _stderr(f"no dev cluster recorded in {state_dir.resolve()}; run `jobq dev-cluster up`")
                return 1
            print(path)
        else:
            return _print_status(state_dir)
    except (BuildError, ControlPlaneError, nodes.NodeError) as exc:
        _stderr(f"error: {exc}")
        return 1
    return 0


def _print_status(state_dir: Path) -> int:
    status = ControlPlane(ControlPlaneConfig(state_dir=state_dir)).status()
    if status.state is None:
        print(f"no dev cluster recorded in {state_dir.resolve()}")
        return 1
    started = "" if status.state.ready else "  (start-up did not complete; run down)"
    print(f"server: {status.state.server}  apiserver ready: {status.apiserver_ready}{started}")
    print(f"kubeconfig: {status.state.kubeconfig}")
    for comp in status.components:
        mib = comp.rss_bytes / 2**20
        print(f"  {comp.name:<24} pid {comp.pid:<8} {'alive' if comp.alive else 'DEAD':<6} {mib:7.1f} MiB")
    ready = nodes.ready_nodes(state_dir) if status.apiserver_ready else {}
    for name, agent in sorted(nodes.load(state_dir.resolve()).items()):
        alive = agent.ref.alive()
        print(f"  kubelet {name:<16} pid {agent.pid:<8} {'alive' if alive else 'DEAD':<6} "
              f"node {'Ready' if ready.get(name) else 'NotReady'}")
    return 0 if status.running else 1
