"""The node agent's side of the fork server (``workers.fork_server``): keep one running, start
pods through it, wait for them.

The agent is a child subreaper (``become_subreaper``), so a pod the server double-forks is the
agent's own child: ``ForkedProcess`` waits for it with a pidfd and reads its exit status with
``waitpid``, exactly as for a pod it spawned itself, and a server that dies (or is killed) takes no
pod's status with it. ``ForkServer.run`` restarts a server that died; while none is ready, or when
a request fails before the pod was handed over, ``ForkUnavailable`` tells the agent to start the
pod as a plain subprocess instead, so no attempt is lost. Design: docs/design/fork-server.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from workers import fork_server, pod_env, pod_runtime

log = structlog.get_logger("jobq.node")

ENV_FORK_SERVER = "JOBQ_FORK_SERVER"
"""``0`` (or false/no/off) turns the fork server off: every pod is a plain subprocess."""

IMPORT_TIME_ENV = ("PYTHON", "OMP_", "OPENBLAS_", "MKL_", "LD_", "MALLOC_")
"""Prefixes of variables read when an interpreter or a library starts: a pod that sets one of
them to something else than the fork server has is started as a plain subprocess."""

WARM_UP_S = 30.0
"""At most this long a starting node agent waits for its first fork server before announcing
itself (pods are plain subprocesses until one is ready)."""

_PR_SET_CHILD_SUBREAPER = 36


def enabled_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """The fork server setting (``JOBQ_FORK_SERVER``, default on)."""
    value = (os.environ if environ is None else environ).get(ENV_FORK_SERVER, "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


def become_subreaper(on: bool = True) -> bool:
    """Make this process adopt its orphaned descendants (Linux); False where that is impossible."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)


def forkable(
    command: Sequence[str], *, python: str, pod_env: Mapping[str, str], base_env: Mapping[str, str]
) -> tuple[str, list[str]] | None:
    """``(module, argv)`` when ``command`` is ``python -m <module> argv...`` that a forked pod may
    run (``fork_server.MODULES``) with no start-up variable differing from ``base_env``; else None."""
    if len(command) < 3 or command[0] != python or command[1] != "-m":
        return None
    if command[2] not in fork_server.MODULES:
        return None
    for key in set(pod_env) | set(base_env):
        if key.startswith(IMPORT_TIME_ENV) and pod_env.get(key) != base_env.get(key):
            return None
    return command[2], list(command[3:])


class ForkUnavailable(RuntimeError):
    """The fork server could not start this pod (none ready, or the request failed before the pod
    was handed over): start it as a plain subprocess."""


class ForkedProcess:
    """A pod forked by the fork server and re-parented to this process: the ``pid``,
    ``returncode`` and ``wait()`` of an ``asyncio.subprocess.Process``, read with a pidfd and
    ``waitpid`` (negative return code: killed by that signal)."""

    def __init__(self, pid: int, *, inherited_bytes: int) -> None:
        self.pid = pid
        self.inherited_bytes = inherited_bytes
        """Resident memory the pod had when forked (the preloaded modules); not charged to it."""
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        self._loop.add_reader(self._pidfd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            found, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not our child after all: nothing can tell how it ended
            log.error("forked_pod_unwaitable", pid=self.pid)
            found, status = self.pid, 255 << 8
        if found == 0:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)
        self._exited.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


def reap_orphans() -> int:
    """Reap our zombie children that were re-parented to us (we are a subreaper): a pod's
    leftover processes, a forked pod the agent never took. Our own children are never touched:
    each is in our session or leads its own; an adopted process is neither. Returns how many."""
    me, my_session, reaped = os.getpid(), os.getsid(0), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, ppid, _pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
        except (OSError, ValueError):
            continue
        pid = int(entry.name)
        if int(ppid) == me and state == "Z" and int(session) not in (my_session, pid):
            with contextlib.suppress(ChildProcessError):
                reaped += os.waitpid(pid, os.WNOHANG)[0] == pid
    return reaped


class ForkServer:
    """One node's fork server process, restarted when it dies."""

    def __init__(
        self,
        *,
        python: str,
        log_path: Path,
        node: str,
        ready_timeout_s: float = 60.0,
        hello_timeout_s: float = 1.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._python = python
        self.env: Mapping[str, str] = dict(pod_env.node_env(os.environ) if env is None else env)
        """The server's environment, by default this process's scrubbed base (``pod_env.node_env``):
        a forked pod is a copy of the server's memory, so no secret may be in it; a forked pod's
        ``os.environ`` is its own."""
        self._log_path = log_path
        self._node = node
        self._ready_timeout_s = ready_timeout_s
        self._hello_timeout_s = hello_timeout_s
        self._ready = asyncio.Event()
        self._control: socket.socket | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._late: set[asyncio.Task[None]] = set()
        self.starts = 0
        """How many servers were started (a restart adds one)."""

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self.ready

    async def warm_up(self, stop: asyncio.Event, *, timeout_s: float = WARM_UP_S) -> bool:
        """Wait for the first server to be ready, at most ``timeout_s`` or until ``stop``: the
        agent announces its node only then, so the first pods are not cold subprocesses that
        compete with the server's own start. False (logged) if it is not ready."""
        ready = asyncio.ensure_future(self._ready.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({ready, stopping}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stopping.cancel()
        if not self.ready and not stop.is_set():
            log.warning("fork_server_not_ready", node=self._node, waited_s=timeout_s)
        return self.ready

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a server running until ``stop``: restart one that died (0.5 s later, doubling up
        to 30 s while it keeps dying within a minute of its start)."""
        delay = 0.5
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    process = await self._start()
                except (OSError, ForkUnavailable, TimeoutError) as exc:
                    log.warning("fork_server_failed", node=self._node, error=str(exc))
                else:
                    exiting = asyncio.ensure_future(process.wait())
                    await asyncio.wait({exiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not exiting.done():
                        exiting.cancel()
                        break
                    log.warning(
                        "fork_server_exited",
                        node=self._node,
                        pid=process.pid,
                        exit_code=pod_runtime.exit_code(exiting.result()),
                    )
                self._forget()
                delay = 0.5 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopping), delay)
        finally:
            stopping.cancel()
            await self.close()

    async def close(self) -> None:
        """Stop the server (pods it started run on: they are not its children)."""
        self._forget()
        for late in list(self._late):
            late.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await late
        if self.process is not None and self.process.returncode is None:
            await pod_runtime.terminate(self.process, grace_s=2.0)

    def _forget(self) -> None:
        self._ready.clear()
        if self._control is not None:
            self._control.close()
            self._control = None

    async def _start(self) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        began = time.monotonic()
        try:
            self.process = await pod_runtime.spawn(
                [self._python, "-m", "workers.fork_server", str(theirs.fileno())],
                env=self.env,
                log_path=self._log_path,
                pass_fds=(theirs.fileno(),),
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.starts += 1
        ours.setblocking(False)
        try:
            said = await asyncio.wait_for(
                asyncio.get_running_loop().sock_recv(ours, 16), self._ready_timeout_s
            )
            if said != fork_server.READY:
                raise ForkUnavailable(f"the fork server said {said!r} instead of ready")
        except BaseException:
            ours.close()
            pod_runtime.signal_group(self.process.pid, signal.SIGKILL)
            raise
        self._control = ours
        self._ready.set()
        log.info(
            "fork_server_started",
            node=self._node,
            pid=self.process.pid,
            duration_ms=round((time.monotonic() - began) * 1000),
        )
        return self.process

    async def spawn(
        self,
        module: str,
        *,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        user: pod_env.PodUser | None = None,
    ) -> ForkedProcess:
        """Fork a pod running ``python -m module argv...`` with exactly ``env`` in its
        ``os.environ``, as ``user`` if given; ForkUnavailable if it was not started (then nothing
        runs), OSError if its log cannot be opened (as ``pod_runtime.spawn``).
        Never waits for a server to become ready: the node must answer the create request."""
        if not self.ready or self._control is None:
            raise ForkUnavailable("no fork server is ready")
        control = self._control
        handle = pod_runtime.open_log(log_path, user=user)
        assert handle is not None
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(control, [b"spawn"], [theirs.fileno(), handle.fileno()])
        except OSError as exc:
            ours.close()
            raise ForkUnavailable(f"the fork server took no request: {exc}") from exc
        finally:
            theirs.close()
            handle.close()
        request = {
            "module": module,
            "argv": list(argv),
            "env": dict(env),
            "cwd": str(cwd) if cwd is not None else None,
            "user": None if user is None else {"uid": user.uid, "gid": user.gid, "groups": list(user.groups)},
        }
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        writer.write(json.dumps(request).encode() + b"\n")
        hello = asyncio.ensure_future(reader.readline())
        try:
            await asyncio.wait_for(asyncio.shield(hello), self._hello_timeout_s)
        except TimeoutError:  # the node's reply cannot wait: the pod, if it comes, is turned away
            late = asyncio.create_task(_turn_away(hello, writer), name="fork-turn-away")
            self._late.add(late)
            late.add_done_callback(self._late.discard)
            raise ForkUnavailable("the forked pod did not answer in time") from None
        try:
            process = _adopt(hello)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            writer.close()
            raise ForkUnavailable(f"the forked pod did not answer: {exc!r}") from exc
        try:
            writer.write(fork_server.GO)
            await writer.drain()
        except OSError as exc:  # it cannot have read go: make sure it never runs
            pod_runtime.signal_group(process.pid, signal.SIGKILL)
            raise ForkUnavailable(f"the forked pod went away: {exc!r}") from exc
        finally:
            writer.close()
        return process


async def _turn_away(hello: asyncio.Future[bytes], writer: asyncio.StreamWriter) -> None:
    """A pod forked after its request was given up: adopt it (so it is reaped), send no ``go``."""
    try:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, TimeoutError):
            process = _adopt(await asyncio.wait_for(hello, 60))
            log.warning("forked_pod_turned_away", pid=process.pid)
    finally:
        writer.close()


def _adopt(hello: asyncio.Future[bytes] | bytes) -> ForkedProcess:
    """The pod that said hello (its pid and inherited memory); ValueError if none did."""
    line = hello.result() if isinstance(hello, asyncio.Future) else hello
    answer = json.loads(line or b"null")
    if not isinstance(answer, dict):
        raise ValueError("the fork server closed the pod's connection")
    return ForkedProcess(int(answer["pid"]), inherited_bytes=int(answer["inherited_rss"]))


async def start_pod(
    command: Sequence[str],
    *,
    forks: ForkServer | None,
    python: str,
    env: Mapping[str, str],
    log_path: Path,
    user: pod_env.PodUser | None = None,
    **context: object,
) -> tuple[pod_runtime.PodProcess, int]:
    """Start a pod with exactly ``env`` as its environment (as ``user`` if given), forked when
    it can be (``forkable``, a server ready), else as a plain subprocess (``pod_runtime.spawn``;
    its OSError is a start error). Returns the process and the bytes of resident memory it
    inherited (0 for a subprocess). ``context``: log keys."""
    forking = None if forks is None else forkable(command, python=python, pod_env=env, base_env=forks.env)
    if forks is not None and forking is not None:
        try:
            module, argv = forking
            forked = await forks.spawn(module, argv=argv, env=env, log_path=log_path, user=user)
        except ForkUnavailable as exc:
            log.warning("pod_fork_fell_back", **context, reason="fork_unavailable", error=str(exc))
        else:
            return forked, forked.inherited_bytes
    return await pod_runtime.spawn(command, env=env, log_path=log_path, user=user), 0
