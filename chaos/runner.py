"""Run an experiment programmatically: start a stack (or use one), run Chaos Toolkit, judge the
journal, snapshot what the system recorded, render the report.

Chaos Toolkit's ``run_experiment`` must run in the main thread (it installs signal handlers), so a
stack we start lives in a background thread with its own event loop; its processes are children
of that thread, which stays alive until the stack stops.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from broker import contract
from broker.embedded.stack import Stack, StackConfig
from chaos import probes, target
from chaos.target import RunState

log = structlog.get_logger("jobq.chaos")

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
SETTINGS: dict[str, Any] = {"runtime": {"rollbacks": {"strategy": "always"}}}
"""Rollbacks always run, so a deviated experiment still restores the capacity it removed."""


class ExperimentNotFound(LookupError):
    pass


def list_experiments() -> list[tuple[str, str]]:
    """(name, title) of every bundled experiment."""
    found = []
    for path in sorted(EXPERIMENTS_DIR.glob("*.json")):
        found.append((path.stem, str(json.loads(path.read_text()).get("title", ""))))
    return found


def experiment_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".json", ".yaml", ".yml") and path.exists():
        return path
    bundled = EXPERIMENTS_DIR / f"{name_or_path}.json"
    if bundled.exists():
        return bundled
    names = ", ".join(name for name, _ in list_experiments())
    raise ExperimentNotFound(f"no experiment {name_or_path!r}; bundled: {names}")


def stack_requirements(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The ``jobq`` extension block: what stack the experiment needs (nodes, dispatchers, ...)."""
    for ext in experiment.get("extensions", []):
        if ext.get("name") == "jobq":
            return dict(ext.get("stack", {}))
    return {}


def kubernetes_env() -> dict[str, str]:
    """JOBQ_BACKEND/JOBQ_KUBECONFIG for a stack on the Kubernetes backend (experiments whose jobq
    extension says ``"backend": "kubernetes"``): $JOBQ_KUBECONFIG, else the dev cluster's."""
    from devcluster.nodes import stack_env

    explicit = os.environ.get("JOBQ_KUBECONFIG")
    return stack_env(Path(explicit) if explicit else None)


def problems(journal: Mapping[str, Any]) -> list[str]:
    """Why the journal is not a pass; empty when it is. ``status == completed`` alone is not a
    pass: the steady state must hold before and after and every activity must have succeeded."""
    found = []
    if journal.get("status") != "completed":
        found.append(f"status is {journal.get('status')!r}, not 'completed'")
    if journal.get("deviated"):
        found.append("the steady state deviated")
    for phase in ("before", "after"):
        ssh = (journal.get("steady_states") or {}).get(phase)
        if not ssh:
            found.append(f"no steady-state check {phase} the method")
            continue
        for p in ssh.get("probes", []):
            if not p.get("tolerance_met", False):
                found.append(
                    f"{phase}: probe {p['activity']['name']} gave {p.get('output')!r} "
                    f"(tolerance {p['activity'].get('tolerance')!r})"
                )
    for section in ("run", "rollbacks"):
        for r in journal.get(section) or []:
            if r.get("status") != "succeeded":
                last = (r.get("exception") or ["?"])[-1].strip()
                found.append(f"{section}: {r['activity']['name']} {r.get('status')}: {last}")
    return found


@dataclasses.dataclass
class Outcome:
    name: str
    journal: dict[str, Any]
    problems: list[str]
    snapshot: dict[str, Any]
    journal_path: Path | None
    report_path: Path | None
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.problems


class BackgroundStack:
    """A Stack running on an event loop in its own thread."""

    def __init__(self, config: StackConfig) -> None:
        self.stack = Stack(config, progress=lambda m: log.info("chaos_stack", message=m))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="jobq-stack", daemon=True)

    def start(self, *, timeout_s: float = 180.0) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.stack.start(), self._loop).result(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self.stack.stop(), self._loop).result(120)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()


async def snapshot(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """What the system recorded about the run's jobs (the burst and any training job): records and
    events, and the exactly-once checker's last judgement (made by the steady-state probe), for
    the report."""
    cfg = dict(configuration)
    state = RunState.load(cfg)
    jobs: dict[str, Any] = {}
    async with target.client(cfg, name="jobq-chaos-snapshot") as client:
        for job_id in [*state.burst, *state.training]:
            record = await client.get(job_id)
            events = await client.events(job_id)
            jobs[job_id] = {
                "record": record.model_dump(mode="json") if record else None,
                "events": [e.model_dump(mode="json") for e in events],
            }
        records = [contract.JobRecord.model_validate(j["record"]) for j in jobs.values() if j["record"]]
    return {
        "run_id": state.run_id,
        "submitted_at": state.submitted_at,
        "disruptions": state.disruptions,
        "recoveries": probes.recoveries(records, state.disruptions),
        "jobs": jobs,
        "exactly_once": state.checks[-1] if state.checks else None,
    }


def run(
    name_or_path: str,
    *,
    journal_path: Path | None = Path("journal.json"),
    report_path: Path | None = None,
    data_dir: Path | None = None,
    nats_url: str | None = None,
    stack_env: Mapping[str, str] | None = None,
    config_vars: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run one experiment; start a stack for it unless ``nats_url`` names a running one."""
    from chaoslib.experiment import ensure_experiment_is_valid, run_experiment
    from chaoslib.loader import load_experiment

    path = experiment_path(name_or_path)
    experiment = load_experiment(str(path))
    ensure_experiment_is_valid(copy.deepcopy(experiment))
    started = time.monotonic()
    run_id = target.new_run_id()
    background: BackgroundStack | None = None
    k8s_vars: dict[str, str] = {}
    if nats_url is None:
        needs = stack_requirements(experiment)
        stack_env = dict(stack_env or {})
        if needs.get("backend") == "kubernetes":
            if "JOBQ_KUBECONFIG" not in stack_env:
                stack_env = {**kubernetes_env(), **stack_env}
            stack_env.setdefault("JOBQ_BACKEND", "kubernetes")
            k8s_vars = {"kubeconfig": stack_env["JOBQ_KUBECONFIG"]}
            if stack_env.get("JOBQ_NAMESPACE"):
                k8s_vars["namespace"] = stack_env["JOBQ_NAMESPACE"]
        data_dir = data_dir or Path(".jobq") / f"chaos-{path.stem}"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        background = BackgroundStack(
            StackConfig(
                data_dir=data_dir,
                nodes=int(needs.get("nodes", 3)),
                dispatchers=int(needs.get("dispatchers", 1)),
                nats_servers=int(needs.get("nats_servers", 1)),
                nats_port=-1,
                http_port=0,
                env=dict(stack_env or {}),
            )
        )
        background.start()
        nats_url = background.stack.nats_url
    data_dir = data_dir or Path(".jobq")
    configuration = {
        "data_dir": str(data_dir),
        "nats_url": nats_url,
        "run_id": run_id,
        **k8s_vars,
        **(config_vars or {}),
    }
    log.info("chaos_run_started", experiment=path.stem, run_id=run_id, nats=nats_url, data_dir=str(data_dir))
    try:
        journal: dict[str, Any] = run_experiment(
            experiment, settings=copy.deepcopy(SETTINGS), experiment_vars=(dict(configuration), {})
        )
        try:
            snap = asyncio.run(snapshot(configuration))
        except Exception as exc:  # the report still renders from the journal alone
            log.warning("chaos_snapshot_failed", error=repr(exc))
            state = RunState.load(configuration)
            snap = {
                "run_id": run_id,
                "jobs": {},
                "disruptions": state.disruptions,
                "recoveries": [],
                "exactly_once": state.checks[-1] if state.checks else None,
            }
    finally:
        if background is not None:
            background.stop()
    found = problems(journal)
    if journal_path is not None:
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        journal_path.write_text(json.dumps(journal, indent=2, default=str))
    if report_path is not None:
        from chaos import report

        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(report.render(journal, snap, problems=found))
    outcome = Outcome(
        name=path.stem,
        journal=journal,
        problems=found,
        snapshot=snap,
        journal_path=journal_path,
        report_path=report_path,
        seconds=round(time.monotonic() - started, 1),
    )
    log.info(
        "chaos_run_finished",
        experiment=path.stem,
        run_id=run_id,
        passed=outcome.passed,
        problems=found,
        recoveries=snap.get("recoveries"),
        seconds=outcome.seconds,
    )
    return outcome
