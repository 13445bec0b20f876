"""Run a pod as a local process group: start it, watch its memory, report its exit, kill it.

Used by both node-agent modes (the embedded node and the simulated kubelet). Each pod leads its
own session, so a kill reaches every process it started.

- The embedded node agent (``spawn``): each pod dies with its agent (Linux parent-death signal),
  as a pod dies with its machine.
- The simulated kubelet (``spawn_detached``): pods survive their agent, as containers survive a
  real kubelet's restart. The command runs under a tiny ``sh`` wrapper that leads the process
  group and writes the command's exit code to an exit file when it ends, so a restarted agent can
  adopt the process (``PodRecord``: pid plus kernel start time) and still learn how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from workers.pod_env import PodUser

_PR_SET_PDEATHSIG = 1

_WRAPPER = 'trap : TERM INT; "$@"; code=$?; echo "$code" > {exit_file}; exit "$code"'
"""``sh -c`` script around a kubelet pod's command. It leads the pod's process group; SIGTERM and
SIGINT sent to the group are trapped (the handler only runs once the command has ended, and exec
resets it in the command), so the command handles them as it would without the wrapper and its
exit code is recorded. SIGKILL of the group (OOM kill, grace expired) leaves no exit file."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def wrap_with_exit_file(command: Sequence[str], exit_file: Path) -> list[str]:
    """``command`` run by the exit-code-recording ``sh`` wrapper (see ``_WRAPPER``)."""
    return ["/bin/sh", "-c", _WRAPPER.format(exit_file=shlex.quote(str(exit_file))), "jobq-pod", *command]


def check_executable(program: str, *, path: str | None = None, cwd: Path | None = None) -> None:
    """Raise the OSError that exec'ing ``program`` would raise (``execvp`` rules: a name with a
    slash is tried as is, else each directory of ``path``), with the message ``subprocess``
    gives, e.g. ``[Errno 2] No such file or directory: 'x'``. Used where a wrapper would hide
    the OS error behind the shell's exit code 127 or 126."""
    if "/" in program:
        candidates = [program]
    else:
        candidates = [os.path.join(d or ".", program) for d in (path or os.defpath).split(os.pathsep)]
    denied = False
    for candidate in candidates if program else ():
        full = Path(cwd or ".", candidate)
        if not full.exists():
            continue
        if full.is_file() and os.access(full, os.X_OK):
            return
        denied = True  # a directory, or a file without execute permission
    code = errno.EACCES if denied else errno.ENOENT
    raise OSError(code, os.strerror(code), program)


class PodProcess(Protocol):
    """What the agent needs of a running pod: an ``asyncio.subprocess.Process``, or a pod the
    fork server forked (``workers.fork_client.ForkedProcess``)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


def open_log(log_path: Path | None, *, user: PodUser | None = None) -> IO[bytes] | None:
    """The pod's log, for appending; owned by ``user`` (the pod's, when it runs as another)."""
    if log_path is None:
        return None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    if user is not None:
        os.fchown(handle.fileno(), user.uid, user.gid)
    return handle


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
    pass_fds: Sequence[int] = (),
    user: PodUser | None = None,
) -> asyncio.subprocess.Process:
    """Start ``command`` in a new session (process group = its pid), for the embedded node agent.

    ``env`` is the child's whole environment (nothing is inherited). ``die_with_parent``: the
    kernel SIGKILLs it when this process dies (set after the switch to ``user``, which would clear
    it). Without it the child still dies with asyncio's transport if that is closed or collected
    while the child runs; pods that must outlive their agent use ``spawn_detached``.
    ``pass_fds``: descriptors the child keeps (all others are closed). ``user``: run as that user
    (groups, gid, then uid are set in the child before exec; the log is made theirs).
    """
    handle = open_log(log_path, user=user)
    try:
        return await asyncio.create_subprocess_exec(
            *command,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle if handle is not None else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT if handle else asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
            pass_fds=tuple(pass_fds),
            user=user.uid if user is not None else None,
            group=user.gid if user is not None else None,
            extra_groups=list(user.groups) if user is not None else None,
        )
    finally:
        if handle is not None:
            handle.close()


def spawn_detached(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    exit_file: Path,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a pod that outlives its agent (simulated kubelet): a new session, no parent-death
    signal, run by the ``sh`` wrapper that writes the exit code to ``exit_file``.

    A ``Popen`` rather than an asyncio process, whose transport would kill the child when the
    agent's loop is torn down; wait for it with ``wait_exit``. A command that cannot be started
    raises the OSError exec would (FileNotFoundError, PermissionError) here, as it would without
    the wrapper (``check_executable``).
    """
    argv = list(command)
    if not argv:
        raise OSError("empty command")
    check_executable(argv[0], path=env.get("PATH", os.defpath), cwd=cwd)
    exit_file.parent.mkdir(parents=True, exist_ok=True)
    exit_file.unlink(missing_ok=True)  # a stale code must not be taken for this run's
    handle = open_log(log_path)
    try:
        return subprocess.Popen(
            wrap_with_exit_file(argv, exit_file),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if handle is not None:
            handle.close()


async def wait_exit(process: subprocess.Popen[bytes]) -> int:
    """Wait for a ``spawn_detached`` child without a thread (pidfd; polling where unavailable)."""
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        while process.poll() is None:
            await asyncio.sleep(0.2)
        return process.returncode
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        loop.add_reader(fd, readable)
        try:
            if process.poll() is None:
                await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return process.wait()


def exit_code(returncode: int) -> int:
    """Shell-style exit code: a process killed by signal N exits 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def terminate(process: PodProcess, *, grace_s: float) -> int:
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


# --- processes that are not our children (adopted by a restarted kubelet) -------------------


def start_ticks(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot; /proc field 22), or None if gone.

    Stored with a pid, it tells the process we started from a later one that reuses the pid.
    """
    stat = _stat(pid)
    return stat[1] if stat is not None else None


def alive(pid: int, ticks: int) -> bool:
    """True while the process ``pid`` started at ``ticks`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[1] == ticks and stat[0] != "Z"


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces and ')'
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def read_exit_file(path: Path) -> int | None:
    """The exit code the ``sh`` wrapper recorded, or None (not ended, or killed with SIGKILL)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


async def wait_gone(pid: int, ticks: int, *, timeout_s: float | None = None, poll_s: float = 0.5) -> bool:
    """Poll until the process is gone; False if it still runs after ``timeout_s``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while alive(pid, ticks):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def terminate_group(pid: int, ticks: int, *, grace_s: float) -> None:
    """``terminate`` by pid: the group of a ``spawn_detached`` pod, ours or adopted.

    Liveness is polled (a zombie counts as gone), so it works for processes that are not our
    children; our own children are reaped by ``wait_exit``."""
    if not alive(pid, ticks):
        return  # long gone, maybe: its group id may be someone else's by now
    signal_group(pid, signal.SIGTERM)
    signal_group(pid, signal.SIGCONT)  # a stopped pod cannot handle SIGTERM
    if not await wait_gone(pid, ticks, timeout_s=grace_s, poll_s=0.05):
        signal_group(pid, signal.SIGKILL)
        await wait_gone(pid, ticks, timeout_s=5.0, poll_s=0.05)
    signal_group(pid, signal.SIGKILL)  # leftovers of the group


# --- records of running pods (simulated kubelet) ---------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PodRecord:
    """One pod process started by the simulated kubelet, as ``<pods dir>/<uid>.json``.

    Written when the process starts, removed when the Pod object is gone. A restarted kubelet
    adopts the process from it; ``devcluster.nodes.kill_node`` (machine death) kills it.
    """

    uid: str
    namespace: str
    name: str
    container: str
    image: str
    job_id: str
    attempt: int
    pid: int
    """Leader of the pod's process group (the ``sh`` wrapper); the group id is the same."""
    start_ticks: int
    log: str
    log_offset: int
    """Where this pod's output starts in ``log`` (a log file may hold earlier pods of that name)."""
    exit_file: str
    started_at: str
    limit_bytes: int | None = None
    message_policy: str = "File"
    """The container's terminationMessagePolicy."""

    @property
    def alive(self) -> bool:
        return alive(self.pid, self.start_ticks)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.uid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)) + "\n")
        os.replace(tmp, path)
        return path

    @staticmethod
    def remove(directory: Path, uid: str) -> None:
        for suffix in (".json", ".exit"):
            (directory / f"{uid}{suffix}").unlink(missing_ok=True)


def read_records(directory: Path) -> dict[str, PodRecord]:
    """Every readable record in ``directory``, by pod UID."""
    found: dict[str, PodRecord] = {}
    if not directory.is_dir():
        return found
    fields = {f.name for f in dataclasses.fields(PodRecord)}
    for path in sorted(directory.glob("*.json")):
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            record = PodRecord(**{k: v for k, v in raw.items() if k in fields})
        except (OSError, ValueError, TypeError):
            continue
        found[record.uid] = record
    return found


def kill_recorded(directory: Path) -> int:
    """SIGKILL the process group of every recorded pod that still runs; returns how many."""
    killed = 0
    for record in read_records(directory).values():
        if record.alive:
            signal_group(record.pid, signal.SIGKILL)
            killed += 1
    return killed
