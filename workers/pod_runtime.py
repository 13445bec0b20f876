"""Run a pod as a local process group: start it, watch its memory, report its exit, kill it.

Used by both node-agent modes (the embedded node and the simulated kubelet). Each pod leads its
own session, so a kill reaches every process it started. Each pod also dies with its node agent
(Linux parent-death signal), as a pod dies with its machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start ``command`` in a new session that is killed when this process dies."""
    out: int | IO[bytes] = asyncio.subprocess.DEVNULL
    handle: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = log_path.open("ab")
        out = handle
    try:
        return await asyncio.create_subprocess_exec(
            *command,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT if handle else asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        if handle is not None:
            handle.close()


def exit_code(returncode: int) -> int:
    """Shell-style exit code: a process killed by signal N exits 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def terminate(process: asyncio.subprocess.Process, *, grace_s: float) -> int:
    """SIGTERM the pod's process group, SIGKILL it after ``grace_s``; return the exit code."""
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
        signal_group(process.pid, signal.SIGCONT)  # a stopped pod cannot handle SIGTERM
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            signal_group(process.pid, signal.SIGKILL)
    returncode = await process.wait()
    signal_group(process.pid, signal.SIGKILL)  # leftovers of the group
    return exit_code(returncode)


def rss_by_group(pgids: set[int]) -> dict[int, int]:
    """Resident bytes of each process group in ``pgids``, summed over its processes (/proc)."""
    totals = dict.fromkeys(pgids, 0)
    proc = Path("/proc")
    if not pgids or not proc.exists():
        return totals
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pgid = int(stat[stat.rindex(")") + 2 :].split()[2])  # field 5 of stat: process group
            if pgid in totals:
                totals[pgid] += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return totals
