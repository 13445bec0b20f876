"""What the kwok benches (``bench.k8s_dispatch``, ``bench.k8s_scale``) share: the job they run, the
jobq stack they start against a ``KwokCluster``, per-process CPU and memory readings from
``/proc``, and the run itself (arguments, start-up, clean-up on a signal, the report).
Not a bench on its own."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from bench.k8s_cluster import KwokCluster, say
from broker import policy
from broker.embedded.stack import Stack, StackConfig
from devcluster.build import ensure_binaries

CPU = 0.1
MEMORY = "64Mi"
COMMAND = ("sleep", "3600")
"""Every job of the kwok benches: ``sleep 3600`` asking for 100m CPU and 64Mi."""
TICKS = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


# --- one process, from /proc ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _status_bytes(pid: int, field: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` in bytes; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory now (``VmRSS``)."""
    return _status_bytes(pid, "VmRSS")


def vm_hwm(pid: int) -> int:
    """Peak resident memory (``VmHWM``)."""
    return _status_bytes(pid, "VmHWM")


class CpuMeter:
    """CPU-seconds per process between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.result: dict[str, float] | None = None

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.before[name] = cpu_seconds(pid)

    def stop(self) -> dict[str, float]:
        """The CPU-seconds so far; the first call fixes them (later calls return the same)."""
        if self.result is None:
            self.result = {
                name: round(cpu_seconds(pid) - self.before[name], 1) for name, pid in self.pids.items()
            }
        return self.result


def p99(ordered: list[float]) -> float:
    """The 99th percentile of sorted, non-empty ``ordered`` (nearest rank, rounded down)."""
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


# --- jobq against the cluster ---------------------------------------------------------------------


def jobq_env(cluster: KwokCluster, namespace: str) -> dict[str, str]:
    return {
        "JOBQ_BACKEND": "kubernetes",
        "JOBQ_KUBECONFIG": str(cluster.kubeconfig),
        "JOBQ_NAMESPACE": namespace,
        "JOBQ_QUEUE_POLICY": policy.OPEN_ENV,  # the jobs are commands
    }


def jobq_stack(work: Path, cluster: KwokCluster, namespace: str, *, label: str) -> Stack:
    """An embedded jobq stack (NATS + one dispatcher, no nodes, ``JOBQ_BACKEND=kubernetes``,
    jobq's defaults) in ``work/jobq-stack``, creating its pods in ``namespace``; not started.
    Its progress lines go to ``say`` after ``label``."""
    config = StackConfig(
        data_dir=work / "jobq-stack",
        nodes=0,
        nats_port=-1,
        http_port=0,
        env=jobq_env(cluster, namespace),
    )
    return Stack(config, progress=lambda line: say(f"{label}{line}"))


# --- the run --------------------------------------------------------------------------------------


def arg_parser(doc: str | None, add: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The bench's command line: its docstring as help, its own options (``add``), then
    ``--json`` and ``--keep``."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((doc or "").split("\n")[1:]),
    )
    add(parser)
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout; the table on stderr")
    parser.add_argument("--keep", action="store_true", help="keep the state directory (logs) afterwards")
    return parser


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_on_kwok(
    args: argparse.Namespace,
    *,
    prefix: str,
    cluster: Callable[[Path], KwokCluster],
    run: Callable[[KwokCluster], Coroutine[Any, Any, T]],
) -> tuple[T, float]:
    """Build what is missing, make a state directory (``args.work``, named ``prefix``...), start
    ``cluster(args.work / "cluster")``, ``run`` it and stop it. SIGTERM and SIGHUP stop everything
    and exit 130, like Ctrl-C. The directory is removed after a good run unless ``args.keep``.
    Returns ``run``'s result and the seconds the whole took."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ensure_binaries(progress=say)
    args.work = Path(tempfile.mkdtemp(prefix=prefix))
    started = time.monotonic()
    kwok = cluster(args.work / "cluster")
    ok = False
    try:
        kwok.start()
        result = asyncio.run(run(kwok))
        ok = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; everything was stopped")
        sys.exit(130)
    finally:
        kwok.stop()
        if ok and not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
        else:
            say(f"state and logs kept in {args.work}")
    return result, time.monotonic() - started


def report(table: str, document: dict[str, Any], *, as_json: bool) -> None:
    """The table on stdout; with ``as_json``, ``document`` (plus the command line) as JSON on
    stdout and the table on stderr."""
    if as_json:
        print(table, file=sys.stderr)
        print(json.dumps({**document, "command": " ".join(sys.argv)}, indent=2, default=str))
    else:
        print(table)
