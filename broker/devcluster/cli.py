"""``up`` / ``down`` / ``status`` / ``build`` commands (``python -m broker.devcluster``).

Meant to back ``jobq dev-cluster ...``: call ``main(argv)`` from the project CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.devcluster.build import BuildError, ensure_binaries
from broker.devcluster.controlplane import (
    ControlPlane,
    ControlPlaneConfig,
    ControlPlaneError,
    default_state_dir,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="jobq dev-cluster", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None, help="default: ./.jobq/dev-cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a local control plane in the background")
    up.add_argument("--node-monitor-grace-period", default="5s")
    sub.add_parser("down", help="stop the control plane started by 'up'")
    sub.add_parser("status", help="show component liveness and memory")
    sub.add_parser("build", help="only build/locate the binaries")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir or default_state_dir()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.command == "build":
            bins = ensure_binaries(progress=say)
            for name, path in vars(bins).items():
                print(f"{name}: {path}")
        elif args.command == "up":
            config = ControlPlaneConfig(
                state_dir=state_dir, node_monitor_grace_period=args.node_monitor_grace_period
            )
            state = ControlPlane(config, progress=say).start()
            print(f"export KUBECONFIG={state.kubeconfig}")
        elif args.command == "down":
            if not ControlPlane.stop_recorded(state_dir):
                say(f"no dev cluster recorded in {state_dir.resolve()}")
        else:
            return _print_status(state_dir)
    except (BuildError, ControlPlaneError) as exc:
        say(f"error: {exc}")
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
    return 0 if status.running else 1
