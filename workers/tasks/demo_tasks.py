"""Tasks for tests and chaos experiments: sleep, fail on purpose, exit with a code, use memory,
report the size of an argument, and witness (leave evidence of what really ran)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import time
import uuid
from typing import Any

from broker import contract
from workers import tasks

_MIB = 1024 * 1024


async def sleep(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Sleep ``seconds`` in ``progress_steps`` steps, reporting progress after each one."""
    tasks.check_keys(args, ("seconds", "progress_steps"))
    seconds = tasks.float_arg(args, "seconds", default=1.0, low=0, high=7 * 86400)
    steps = tasks.int_arg(args, "progress_steps", default=5, low=1, high=10_000)
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        ctx.progress(step / steps, f"slept {seconds * step / steps:.3g} of {seconds:g} s")
    return {"slept_s": seconds, "steps": steps}


def flaky(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Fail (exit 1) on every attempt before ``succeed_on``, then succeed."""
    tasks.check_keys(args, ("succeed_on",))
    succeed_on = tasks.int_arg(args, "succeed_on", default=3, low=1)
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose; attempt {succeed_on} succeeds")
    return {"attempt": ctx.attempt, "succeed_on": succeed_on}


def exit_with(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Make the runner exit with ``code``; code 0 is an ordinary success."""
    tasks.check_keys(args, ("code",))
    if "code" not in args:
        raise tasks.BadArgs("argument 'code' is required")
    code = tasks.int_arg(args, "code", default=0, low=0, high=255)
    if code == 0:
        return {"code": 0}
    raise tasks.TaskExit(code, f"demo.exit: exiting with code {code} as asked")


def hog(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Allocate ``mb`` MiB, write to every page of it, and hold it for ``seconds``."""
    tasks.check_keys(args, ("mb", "seconds"))
    if "mb" not in args:
        raise tasks.BadArgs("argument 'mb' is required")
    mb = tasks.int_arg(args, "mb", default=0, low=0, high=1024 * 1024)
    seconds = tasks.float_arg(args, "seconds", default=2.0, low=0, high=7 * 86400)
    ballast = b"\x5a" * (mb * _MIB)  # filled, so every page is resident (not lazily zeroed)
    ctx.progress(0.0, f"holding {mb} MiB")
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        time.sleep(min(seconds - elapsed, 0.2))
        ctx.progress(min(1.0, (time.monotonic() - start) / seconds), f"holding {mb} MiB")
    held = len(ballast) // _MIB
    del ballast
    return {"mb": held, "held_s": seconds}


def echo_size(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """The length and SHA-256 of the string ``data``, as the task received it (big arguments)."""
    tasks.check_keys(args, ("data",))
    data = args.get("data", "")
    if not isinstance(data, str):
        raise tasks.BadArgs(f"argument 'data' must be a string, not {type(data).__name__}")
    encoded = data.encode("utf-8", errors="surrogatepass")
    return {"chars": len(data), "bytes": len(encoded), "sha256": hashlib.sha256(encoded).hexdigest()}


WITNESS_ARTIFACT = "witness.txt"
"""The artifact demo.witness saves: its token, as text."""


async def witness(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Sleep like demo.sleep, leaving evidence of what really ran for an independent checker
    (tests/checker.py): a ``start`` line in the JSONL file ``ledger`` when it begins; then a fresh
    random token, saved as artifact ``witness.txt``, an ``end`` line carrying the token, and the
    token as the result. The ledger is written by the attempt itself (O_APPEND, one write per line,
    fsynced), never by the dispatcher, so it says which attempts ran and which token each wrote."""
    tasks.check_keys(args, ("ledger", "seconds", "progress_steps"))
    ledger = args.get("ledger")
    if not isinstance(ledger, str) or not ledger:
        raise tasks.BadArgs("argument 'ledger' (the path of a JSONL file) is required")
    if not os.path.isabs(ledger):
        raise tasks.BadArgs(f"argument 'ledger' must be an absolute path, not {ledger!r}")
    seconds = tasks.float_arg(args, "seconds", default=1.0, low=0, high=7 * 86400)
    steps = tasks.int_arg(args, "progress_steps", default=2, low=1, high=10_000)
    pod = os.environ.get(contract.ENV_POD, "")
    identity = {"job_id": ctx.job_id, "attempt": ctx.attempt, "pod": pod, "pid": os.getpid()}
    await asyncio.to_thread(append_ledger, ledger, {"event": "start", **identity})
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        ctx.progress(step / steps, f"slept {seconds * step / steps:.3g} of {seconds:g} s")
    token = uuid.uuid4().hex
    await ctx.asave_artifact(WITNESS_ARTIFACT, token.encode())
    await asyncio.to_thread(append_ledger, ledger, {"event": "end", **identity, "token": token})
    return {"token": token, "pod": pod, "slept_s": seconds, "artifact": WITNESS_ARTIFACT}


def append_ledger(path: str, entry: dict[str, Any]) -> None:
    """Append ``entry`` (plus ``at``, now in UTC) as one JSON line: one O_APPEND write, fsynced, so
    lines of concurrent writers never interleave and a written line survives the writer's death."""
    line = json.dumps({**entry, "at": dt.datetime.now(dt.UTC).isoformat()}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
