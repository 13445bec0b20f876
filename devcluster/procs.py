"""Starting, probing and stopping the control-plane child processes (Linux)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessRef:
    """A process identified robustly: pid plus kernel start time (guards against pid reuse)."""

    pid: int
    start_time: int

    def alive(self) -> bool:
        """True while the process exists, is not a zombie and is the one we started."""
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] == self.start_time and stat[0] != "Z"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    parent_death_signal: signal.Signals | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRef]:
    """Start ``argv`` in its own session with stdout+stderr appended to ``log_path``.

    By default the process outlives this one (it is reparented to init when we exit).
    With ``parent_death_signal`` the kernel sends it that signal when the *thread* that
    started it dies (Linux PR_SET_PDEATHSIG), so a crashed test run leaks nothing.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=None if parent_death_signal is None else _die_with(parent_death_signal),
        )
    stat = _read_stat(proc.pid)
    return proc, ProcessRef(proc.pid, stat[1] if stat is not None else 0)


def terminate(
    ref: ProcessRef, *, popen: subprocess.Popen[bytes] | None = None, timeout: float = 10.0
) -> bool:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL and wait. Returns False if it needed SIGKILL."""
    if not _signal(ref, signal.SIGTERM):
        _reap(popen)
        return True
    if _wait_gone(ref, popen, timeout):
        return True
    _signal(ref, signal.SIGKILL)
    _wait_gone(ref, popen, 5.0)
    return False


def tail(path: Path, lines: int = 25, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _signal(ref: ProcessRef, sig: signal.Signals) -> bool:
    if not ref.alive():
        return False
    try:
        os.kill(ref.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(ref: ProcessRef, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                return True
        elif not ref.alive():
            return True
        time.sleep(0.05)
    return False


def _reap(popen: subprocess.Popen[bytes] | None) -> None:
    if popen is not None:
        try:
            popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/<pid>/stat, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


def _die_with(sig: signal.Signals) -> Callable[[], None]:
    def set_parent_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return set_parent_death_signal
