"""The fork server: a node's pre-warmed Python that forks one process per task attempt.

``python -m workers.fork_server <fd>`` is started by the embedded node agent
(``workers.fork_client``). It imports the heavy modules once (``PRELOAD``: numpy, scikit-learn,
nats, the runner and the built-in tasks), says ``ready`` on the control socket ``<fd>`` and then
serves spawn requests, one at a time, synchronously: it never runs an event loop, starts a thread
or opens a connection, so a forked child inherits nothing half-alive.

A request is one message on the control socket carrying two file descriptors: the child's end of
a fresh socket pair to the agent (the *connection*) and the pod's log file, opened by the agent.
The server double-forks: the intermediate process forks the pod and exits at once, so the pod is
re-parented to the agent (a child subreaper) and is the agent's own child from then on — the
agent waits for it and reads its exit status itself, and the server dying changes nothing for
pods already started. The pod then talks to the agent alone, over the connection:

1. it waits until it is the agent's child and asks for SIGKILL on the agent's death (as a pod
   spawned directly does);
2. it reads the request (module, argv, environment, working directory), leads a new session (its
   pid is its process group), answers with its pid and the resident memory it inherited, and
   waits for ``go``; end of file instead means the agent did not take it: it exits without
   running anything;
3. it becomes what ``python -m <module> <argv>`` would be: stdout and stderr on the log, stdin
   on /dev/null, every other descriptor closed, default signal handling, exactly the pod's
   environment in ``os.environ`` (the server's own is only the node's scrubbed base,
   ``workers.pod_env``), the pod's user if it has one (groups, gid, uid), random generators
   re-seeded, and runs the module as ``__main__``.

The design and its limits: docs/design/fork-server.md.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import os
import random
import runpy
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

PRELOAD = (
    "numpy",
    "sklearn.datasets",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "nats",
    "workers.runner",
    "workers.tasks.registry",
    "workers.tasks.demo_tasks",
    "workers.tasks.sklearn_tasks",
)
"""Modules imported once by the server; a module that is not installed is skipped."""

MODULES = frozenset({"workers.runner"})
"""What a forked pod may run (``python -m <module>``); anything else is a plain subprocess."""

READY = b"ready"
GO = b"go\n"
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_REQUEST_TIMEOUT_S = 30.0
_REPARENT_TIMEOUT_S = 10.0


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import ``modules``; return those that could not be imported."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def serve(control: socket.socket, *, agent_pid: int) -> None:
    """Answer spawn requests until the agent closes the control socket."""
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(control, 16, 2)
        if not msg:
            return
        if len(fds) != 2:
            _say(f"request without its two descriptors: {len(fds)}")
            _close(fds)
            continue
        try:
            _double_fork(control, connection_fd=fds[0], log_fd=fds[1], agent_pid=agent_pid)
        except OSError as exc:  # EAGAIN, ENOMEM: the agent sees the connection close, and falls back
            _say(f"fork failed: {exc}")
        finally:
            _close(fds)


def _double_fork(control: socket.socket, *, connection_fd: int, log_fd: int, agent_pid: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    intermediate = os.fork()
    if intermediate:
        os.waitpid(intermediate, 0)  # once it is reaped, the pod is the agent's child
        return
    try:  # the intermediate process: fork the pod and leave at once
        control.close()
        if os.fork() == 0:
            _pod(connection_fd=connection_fd, log_fd=log_fd, agent_pid=agent_pid)
    finally:
        os._exit(0)


def _pod(*, connection_fd: int, log_fd: int, agent_pid: int) -> NoReturn:
    """The forked pod: hand-shake with the agent, then run the module (never returns)."""
    try:
        if not _await_reparent(agent_pid):
            os._exit(1)  # the agent is gone: so must its pods be
        with socket.socket(fileno=connection_fd) as connection:
            connection.settimeout(_REQUEST_TIMEOUT_S)
            stream = connection.makefile("rwb")
            request: dict[str, Any] = json.loads(stream.readline())
            os.setsid()  # from here on the agent may signal our group: it learns our pid next
            hello = {"pid": os.getpid(), "inherited_rss": _resident_bytes()}
            stream.write(json.dumps(hello).encode() + b"\n")
            stream.flush()
            if stream.readline() != GO:
                os._exit(1)  # the agent did not take this pod: run nothing
            stream.close()
        _become(request, log_fd=log_fd)
    except BaseException:  # nothing may escape into the server's code
        traceback.print_exc()
        os._exit(1)
    _run_module(str(request["module"]), list(request["argv"]))


def _await_reparent(agent_pid: int) -> bool:
    """Wait until the intermediate process has exited and we are the agent's child; then ask for
    SIGKILL when the agent dies (set only now: the intermediate's exit would have fired it)."""
    intermediate = os.getppid()
    deadline = time.monotonic() + _REPARENT_TIMEOUT_S
    while (parent := os.getppid()) == intermediate and parent != agent_pid:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == agent_pid


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _become(request: dict[str, Any], *, log_fd: int) -> None:
    """Turn this process into what a fresh ``python -m`` of the pod would be."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    if request.get("cwd"):
        os.chdir(str(request["cwd"]))
    for sig in (
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
        signal.SIGALRM,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it at start-up
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})
    user = request.get("user")
    if user:
        os.setgroups([int(g) for g in user["groups"]])
        os.setgid(int(user["gid"]))
        os.setuid(int(user["uid"]))
        if sys.platform.startswith("linux"):
            # The credential change cleared the parent-death signal and made the process
            # undumpable (its /proc files root's); exec would have reset both: so do we. Its
            # memory is the server's, which holds only the node's scrubbed base environment.
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    time.tzset()
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _run_module(module: str, argv: list[str]) -> NoReturn:
    """``python -m module argv...`` in this process, ending as the interpreter would."""
    code: int = 0
    try:
        sys.argv = [module, *argv]
        sys.modules.pop(module, None)  # run afresh as __main__, as ``python -m`` does
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_status(exc)
    except BaseException:  # an uncaught exception: traceback and status 1
        traceback.print_exc()
        code = 1
    finally:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()  # join non-daemon threads, as the interpreter does at exit
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    os._exit(code)


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _say(message: str) -> None:
    print(f"jobq-fork-server[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    agent_pid = os.getppid()
    started = time.monotonic()
    missing = preload()
    _say(f"preloaded in {time.monotonic() - started:.2f}s; not installed: {missing or 'none'}")
    control.sendall(READY)
    try:
        serve(control, agent_pid=agent_pid)
    except (ConnectionError, OSError) as exc:
        _say(f"control socket failed: {exc}")
    _say("agent closed the control socket: exiting")


if __name__ == "__main__":
    main()
