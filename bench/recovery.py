"""Recovery after a node kill, over many affected jobs: runs `jobq demo --kill-node --json` N times.

    .venv/bin/python bench/recovery.py --runs 3 --jobs 48 --node-cpu 16 --node-memory 32Gi

With nodes too small for the survivors to absorb a killed node's work, recovery measures the
backlog (replacements wait for running jobs to finish), not rescheduling: size nodes so that
two of three hold the whole workload.

Prints p50/max of "kill -> replacement attempt running" over every affected job of every run,
and, as the peer in the same run, the detection window the dispatcher was configured with: the
ratio says how much of the recovery is detection and how much is rescheduling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--node-cpu", default="6", help="passed to jobq demo")
    parser.add_argument("--node-memory", default="8Gi", help="passed to jobq demo")
    args = parser.parse_args()
    window = float(os.environ.get("JOBQ_NODE_TIMEOUT_S", "3"))
    samples: list[float] = []
    for run in range(args.runs):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "submitter.cli",
                "demo",
                "--kill-node",
                "--json",
                "--jobs",
                str(args.jobs),
                "--node-cpu",
                args.node_cpu,
                "--node-memory",
                args.node_memory,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        rec = summary.get("recovery_seconds", {})
        samples += rec.get("samples", [])
        print(
            f"run {run + 1}: affected {summary.get('affected_jobs')}, p50 {rec.get('p50')}s, "
            f"max {rec.get('max')}s, lost {summary['lost']}, duplicates {summary['duplicate_results']}, "
            f"succeeded {summary['succeeded']}/{summary['submitted']}"
        )
    if samples:
        p50, worst = statistics.median(samples), max(samples)
        print(
            f"all runs: {len(samples)} affected jobs, recovery p50 {p50:.2f}s max {worst:.2f}s; "
            f"detection window {window:.1f}s; p50/window = {p50 / window:.2f}"
        )


if __name__ == "__main__":
    main()
