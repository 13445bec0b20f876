"""Where the stack under test is, and what this chaos run has done to it so far.

Every activity is a plain synchronous function (Chaos Toolkit calls them from its main thread),
so each one opens its own short-lived NATS connection through :func:`run_async`.

The stack is found from the experiment's configuration: ``nats_url`` (JOBQ_NATS_URL) if set,
else ``<data_dir>/stack.json`` (JOBQ_DATA_DIR, default ``.jobq``), the file ``jobq up`` writes.
Restarts go through the stack supervisor's control subject, so they work the same against
``jobq up`` and against the stack ``jobq chaos run`` starts.

Chaos Toolkit cannot pass an action's output to a later probe, so each run keeps a small state
file, ``<data_dir>/chaos/<run_id>.json``: the burst it submitted (with each job's publish ack),
every disruption (what, when, which process) and the exactly-once checker's findings. Probes and
the HTML report read it back. The burst's ``demo.witness`` jobs write their execution ledger to
``<data_dir>/chaos/<run_id>.ledger.jsonl``.

The judge of exactly-once is the independent checker ``tests/checker.py`` (:func:`load_checker`),
which is not part of the installed package on purpose; see docs/chaos.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import structlog
from nats.aio.client import Client as NATS

from broker import contract, natsutil
from broker.embedded.stack_state import nats_auth_for, nats_ca_for, read_state
from submitter.client import JobqClient

log = structlog.get_logger("jobq.chaos")

T = TypeVar("T")
Configuration = dict[str, Any] | None

BURST_LABEL = "chaos-run"
"""Label key put on every job of a burst; its value is the run id."""
NODE_SILENT_S = 3.0
"""A node whose last heartbeat is older than this is not ready (the dispatcher's default)."""


class ChaosError(RuntimeError):
    """The stack could not be found or did not do what an activity needed."""


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(factory())


# --- configuration -------------------------------------------------------------------------


def data_dir(configuration: Configuration) -> Path:
    value = (configuration or {}).get("data_dir") or os.environ.get("JOBQ_DATA_DIR") or ".jobq"
    return Path(str(value))


def stack_state(configuration: Configuration) -> dict[str, Any]:
    """The stack supervisor's stack.json ({} when the stack was given by URL only)."""
    state = read_state(data_dir(configuration))
    return dict(state) if state else {}


def nats_url(configuration: Configuration) -> str:
    explicit = str((configuration or {}).get("nats_url") or "")
    if explicit:
        return explicit
    url = stack_state(configuration).get("nats_url")
    if isinstance(url, str) and url:
        return url
    return os.environ.get(contract.ENV_NATS_URL) or contract.DEFAULT_NATS_URL


def nats_auth(configuration: Configuration) -> dict[str, str] | None:
    """The operator's credentials of the stack in the data dir, for that stack's own NATS only
    (None: JOBQ_NATS_* from the environment, or no credentials)."""
    return nats_auth_for(nats_url(configuration), data_dir(configuration), "operator")


def client(configuration: Configuration, *, name: str = "jobq-chaos") -> JobqClient:
    """An SDK client on the target's NATS, as the stack's operator, over its TLS."""
    return JobqClient(nats_url(configuration), name=name, auth=nats_auth(configuration),
                      nats_options=nats_options(configuration))


def nats_options(configuration: Configuration) -> dict[str, Any]:
    """TLS towards the stack: JOBQ_NATS_CA when set (the client reads it), else the CA in
    stack.json when ``nats_url`` is that stack's own NATS."""
    if os.environ.get(contract.ENV_NATS_CA):
        return {}
    ca = nats_ca_for(nats_url(configuration), data_dir(configuration))
    return {"tls": contract.client_tls_context(ca_file=ca)} if ca else {}


def run_id(configuration: Configuration) -> str:
    value = str((configuration or {}).get("run_id") or "")
    if not value or value.startswith("${"):
        raise ChaosError(
            "the experiment's configuration has no run_id (a dynamic probe "
            "chaos.probes.new_run_id provides one)"
        )
    return value


def new_run_id() -> str:
    return "c" + dt.datetime.now(dt.UTC).strftime("%H%M%S") + os.urandom(2).hex()


# --- the run's state file ------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class RunState:
    run_id: str
    burst: list[str] = dataclasses.field(default_factory=list)
    submitted_at: str | None = None
    disruptions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    gave_up_waiting_at: str | None = None
    """Set when a wait for the burst timed out after the method: later probes do not wait again."""
    acked: dict[str, int] = dataclasses.field(default_factory=dict)
    """Job id -> stream sequence of its submission's PubAck: the jobs the system accepted."""
    ledger: str | None = None
    """The burst's execution ledger (absolute path; written by the demo.witness attempts)."""
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every judgement of the exactly-once checker in this run: its summary and flagged jobs."""
    training: list[str] = dataclasses.field(default_factory=list)
    """Long training jobs the run submitted (``chaos.training``), judged on work lost, not by the
    checker (they write no ledger)."""

    @classmethod
    def path_for(cls, configuration: Configuration) -> Path:
        return data_dir(configuration) / "chaos" / f"{run_id(configuration)}.json"

    @classmethod
    def load(cls, configuration: Configuration) -> RunState:
        path = cls.path_for(configuration)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(run_id=run_id(configuration))
        return cls(
            run_id=raw["run_id"],
            burst=list(raw.get("burst", [])),
            submitted_at=raw.get("submitted_at"),
            disruptions=list(raw.get("disruptions", [])),
            gave_up_waiting_at=raw.get("gave_up_waiting_at"),
            acked={str(k): int(v) for k, v in (raw.get("acked") or {}).items()},
            ledger=raw.get("ledger"),
            checks=list(raw.get("checks", [])),
            training=list(raw.get("training", [])),
        )

    def save(self, configuration: Configuration) -> None:
        path = self.path_for(configuration)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        tmp.replace(path)


def ledger_path(configuration: Configuration) -> Path:
    """Where the burst's demo.witness attempts append their start and end lines (absolute: the
    pods run in other working directories)."""
    return (data_dir(configuration) / "chaos" / f"{run_id(configuration)}.ledger.jsonl").resolve()


CHECKER_ENV = "JOBQ_CHECKER"
"""Path of ``checker.py`` when the chaos package runs outside a jobq checkout."""


def load_checker() -> ModuleType:
    """The independent exactly-once checker, ``tests/checker.py`` of the checkout this package
    runs from (or the file JOBQ_CHECKER names). It is deliberately not shipped in the wheel: the
    judge shares no code with what it judges beyond the wire contract and the SDK's readers."""
    name = "jobq_exactly_once_checker"
    if name in sys.modules:
        return sys.modules[name]
    checkout = Path(__file__).resolve().parent.parent
    path = Path(os.environ.get(CHECKER_ENV) or checkout / "tests" / "checker.py")
    spec = importlib.util.spec_from_file_location(name, path) if path.is_file() else None
    if spec is None or spec.loader is None:
        raise ChaosError(
            f"the exactly-once checker is not at {path}: jobq's chaos probes run from a jobq checkout "
            f"(tests/checker.py is not part of the package), or set {CHECKER_ENV} to its path"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def record_disruption(configuration: Configuration, disruption: dict[str, Any]) -> int:
    """Append ``disruption`` to the run's state; its index (for ``update_disruption``)."""
    state = RunState.load(configuration)
    state.disruptions.append(disruption)
    state.save(configuration)
    log.info("chaos_disruption", run_id=state.run_id, **disruption)
    return len(state.disruptions) - 1


def update_disruption(configuration: Configuration, index: int, **fields: Any) -> None:
    state = RunState.load(configuration)
    state.disruptions[index].update(fields)
    state.save(configuration)


def now_iso() -> str:
    return contract.utcnow().isoformat()


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


# --- talking to the stack ------------------------------------------------------------------


async def with_client(configuration: Configuration, use: Callable[[JobqClient], Awaitable[T]]) -> T:
    async with client(configuration) as jobq:
        return await use(jobq)


async def control(nc: NATS, op: str, **fields: Any) -> dict[str, Any]:
    """Ask the stack supervisor to (re)start something; raises ChaosError if it refuses."""
    payload = json.dumps({"op": op, **fields}).encode()
    try:
        msg = await natsutil.retry(lambda: nc.request(contract.CONTROL_SUBJECT, payload, timeout=30),
                                   budget_s=60)
    except Exception as exc:
        raise ChaosError(
            f"the stack supervisor did not answer {op!r} on {contract.CONTROL_SUBJECT} ({exc!r}); "
            "restarts need a stack started by `jobq up` or `jobq chaos run`"
        ) from exc
    reply: dict[str, Any] = json.loads(msg.data)
    if not reply.get("ok"):
        raise ChaosError(f"stack supervisor refused {op!r}: {reply.get('error')}")
    return reply


async def node_statuses(nc: NATS, *, window_s: float = 1.5) -> dict[str, contract.NodeStatus]:
    """The latest heartbeat of every node that sent one within ``window_s``."""
    seen: dict[str, contract.NodeStatus] = {}

    async def on_status(msg: Any) -> None:
        with contextlib.suppress(ValueError):
            status = contract.NodeStatus.model_validate_json(msg.data)
            seen[status.name] = status

    sub = await nc.subscribe(contract.NODE_STATUS_WILDCARD, cb=on_status)
    try:
        await asyncio.sleep(window_s)
    finally:
        await sub.unsubscribe()
    return seen


async def burst_records(client: JobqClient, ids: list[str]) -> dict[str, contract.JobRecord | None]:
    return {job_id: await client.get(job_id) for job_id in ids}


async def wait_terminal(
    client: JobqClient, ids: list[str], *, timeout_s: float, configuration: Configuration = None
) -> bool:
    """Wait until every job has a terminal record; False if the deadline passed first. With the
    run's ``configuration``, a timeout is remembered so that the next probe does not wait again."""
    state = RunState.load(configuration) if configuration else None
    if state is not None and state.gave_up_waiting_at:
        timeout_s = 0.5
    try:
        await client.wait(ids, timeout=timeout_s)
    except TimeoutError:
        if state is not None and not state.gave_up_waiting_at:
            state.gave_up_waiting_at = now_iso()
            state.save(configuration)
        return False
    return True


def all_succeeded(ids: list[str], *, timeout_s: float, configuration: Configuration) -> bool:
    """True when every one of ``ids`` ended ``succeeded`` (waits up to ``timeout_s`` for the end;
    true for no ids)."""

    async def go(client: JobqClient) -> bool:
        await wait_terminal(client, ids, timeout_s=timeout_s, configuration=configuration)
        records = await burst_records(client, ids)
        return all(r is not None and r.phase == contract.JobPhase.SUCCEEDED for r in records.values())

    return run_async(lambda: with_client(configuration, go))


async def poll(check: Callable[[], Awaitable[bool]], *, timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``check`` until it is true or ``timeout_s`` passes (activities bring their own deadline,
    because Chaos Toolkit does not enforce timeouts of Python activities)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if await check():
                return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)
