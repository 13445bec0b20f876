"""A long training job under a node kill (experiment ``node-kill-training``): submit it, kill its
node once it has saved some checkpoints, and judge the work the kill threw away from what the pods
wrote (``chaos.checkpoint_evidence``), not from the dispatcher's own figure.

The training job is kept in the run state apart from the burst (``RunState.training``): the
exactly-once checker judges the burst by its ledger, which a training job does not write. The kill
records, with the disruption, the killed attempt, the pointer and checkpoint times as they stood
at the kill and the pod's start as its node reported it: the evidence the probes judge by.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from broker import contract
from chaos import activity, target
from chaos import checkpoint_evidence as evidence
from chaos.target import ChaosError, Configuration, RunState
from submitter.client import JobqClient

__all__ = ["kill_training_node", "resumed_from_newest_checkpoint", "submit_training", "training_succeeded",
           "training_work_lost", "wait_for_training", "work_lost_within_bound"]

TASK = "sklearn.train_incremental"


def submit_training(
    epochs: int = 20,
    epoch_seconds: float = 1.0,
    checkpoint: bool = True,
    dataset: str = "digits",
    seed: int = 7,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """Submit one ``sklearn.train_incremental`` job of ``epochs`` paced epochs (a checkpoint after
    each one, unless ``checkpoint`` is false: the negative control), labelled with the run id."""
    run_id = target.run_id(configuration)
    state = RunState.load(configuration)
    job_id = f"{run_id}-train-{len(state.training):02d}"
    args = {"dataset": dataset, "epochs": int(epochs), "epoch_seconds": float(epoch_seconds),
            "seed": int(seed), "checkpoint": bool(checkpoint)}

    async def go(client: JobqClient) -> None:
        await client.submit(id=job_id, task=TASK, args=args, labels={target.BURST_LABEL: run_id})

    activity.on_stack(configuration, go)
    state = RunState.load(configuration)
    state.training.append(job_id)
    state.save(configuration)
    target.log.info("chaos_training_submitted", run_id=run_id, job_id=job_id, **args)
    return {"job_id": job_id, **args}


def _training_ids(configuration: Configuration) -> list[str]:
    return RunState.load(configuration).training


def wait_for_training(timeout_s: float = 120.0, configuration: Configuration = None) -> dict[str, str]:
    """Wait until the run's training jobs have ended; their phases."""
    ids = _training_ids(configuration)

    async def go(client: JobqClient) -> dict[str, str]:
        if not await target.wait_terminal(client, ids, timeout_s=timeout_s, configuration=configuration):
            raise ChaosError(f"the training jobs did not end within {timeout_s}s")
        records = await target.burst_records(client, ids)
        return {job_id: r.phase.value if r else "missing" for job_id, r in records.items()}

    return activity.on_stack(configuration, go)


def training_succeeded(timeout_s: float = 120.0, configuration: Configuration = None) -> bool:
    """True when every training job of the run succeeded (waits up to ``timeout_s`` for the end;
    true before any was submitted)."""
    return target.all_succeeded(_training_ids(configuration), timeout_s=timeout_s,
                                configuration=configuration)


async def _wait_progress(client: JobqClient, job_id: str, *, checkpoints: int,
                         timeout_s: float) -> tuple[contract.JobRecord, contract.Attempt]:
    """Wait until the job's current attempt runs and has saved ``checkpoints`` checkpoints (its
    pointer); a job that does not checkpoint: until it has run as many epochs (its progress)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = await client.get(job_id)
        current = record.current if record else None
        if record is not None and current and current.state == contract.AttemptState.RUNNING and current.node:
            epochs = int(record.spec.args.get("epochs", 1))
            if record.spec.args.get("checkpoint", True):
                ptr = await evidence.pointer(client.js, job_id)
                if ptr is not None and ptr.owner == current.number and ptr.seq >= checkpoints:
                    return record, current
            else:
                progress = await client.progress(job_id)
                if progress is not None and progress.attempt == current.number \
                        and progress.fraction * epochs >= checkpoints:
                    return record, current
        await asyncio.sleep(0.1)
    raise ChaosError(f"training job {job_id} did not reach {checkpoints} checkpoint(s) within {timeout_s}s")


def kill_training_node(checkpoints: int = 8, after_s: float = 0.5, timeout_s: float = 90.0,
                       configuration: Configuration = None) -> dict[str, Any]:
    """SIGKILL the node agent running the training job (its pods die with it) once it has saved
    ``checkpoints`` checkpoints, ``after_s`` seconds after its next one (so mid-epoch, not just
    after a save). Records with the disruption what the killed attempt had saved: every pointer
    version a watcher saw (the leader deletes superseded checkpoint objects as the job goes, so
    their times are kept from the pointer) and the pointer right after the kill, which nobody can
    change until a replacement restores."""
    (job_id,) = _training_ids(configuration)[-1:] or [""]
    if not job_id:
        raise activity.failed(ChaosError("no training job was submitted in this run"))

    async def go(client: JobqClient) -> dict[str, Any]:
        async with evidence.watch_pointer(client.js, job_id) as log:
            record, attempt = await _wait_progress(client, job_id, checkpoints=checkpoints,
                                                   timeout_s=timeout_s)
            statuses = await target.node_statuses(client.nc)
            node = attempt.node or ""
            if node not in statuses or statuses[node].pid is None:
                raise ChaosError(f"node {node} of {job_id} is not heartbeating with its pid")
            status = statuses[node]
            pod = next((p for p in status.pods if p.job_id == job_id and p.attempt == attempt.number), None)
            if record.spec.args.get("checkpoint", True):
                seen = len(log.of(attempt.number))
                if not await target.poll(lambda: _more(log, attempt.number, seen), timeout_s=30,
                                         interval_s=0.02):
                    raise ChaosError(f"{job_id} saved no checkpoint for 30 s")
            await asyncio.sleep(after_s)
            index, disruption = activity.kill(
                configuration, status.pid or 0, kind="node_kill", victim=node,
                pods=[f"{p.job_id}#{p.attempt}" for p in status.pods])
            at_kill = await evidence.pointer(client.js, job_id)
        found = {
            "training_job": job_id,
            "training_attempt": attempt.number,
            "pod_started_at": pod.started_at.isoformat() if pod and pod.started_at else None,
            "pointer_at_kill": at_kill.model_dump(mode="json") if at_kill else None,
            "checkpoint_times": [p.at.isoformat() for p in log.of(attempt.number) if p.seq and p.at],
        }
        target.update_disruption(configuration, index, **found)
        return {"killed": [{**disruption, **found}]}

    return activity.on_stack(configuration, go)


async def _more(log: evidence.PointerLog, attempt: int, seen: int) -> bool:
    return len(log.of(attempt)) > seen


def _judge(d: dict[str, Any], record: contract.JobRecord | None, final: contract.CheckpointPointer | None,
           *, detection_s: float) -> dict[str, Any]:
    """One training failure judged from the pods' evidence the kill recorded."""
    number = int(d["training_attempt"])
    killed_at = target.parse_time(d["at"])
    saved = d.get("pointer_at_kill")
    at_kill = contract.CheckpointPointer.model_validate(saved) if saved else None
    started = d.get("pod_started_at")
    lost = record.attempts[number - 1] if record and len(record.attempts) >= number else None
    work_started = target.parse_time(started) if started else (lost.started_at if lost and lost.started_at
                                                                 else killed_at)
    lost_s, step = evidence.work_lost(killed_at, at_kill, number, work_started)
    made = [target.parse_time(t) for t in d.get("checkpoint_times") or []]
    paced = float(record.spec.args.get("epoch_seconds", 0.0)) if record else 0.0
    interval = max(evidence.interval_s(made) or 0.0, paced)
    replacement = record.attempts[number] if record and len(record.attempts) > number else None
    # The replacement took the pointer from the killed attempt: the claim is on the final pointer
    # when it is still the owner, else on its record (the dispatcher's copy, for the report).
    redone: int | None = None
    if final is not None and final.owner == number + 1:
        resumed: int | None = final.resumed_step
        redone = final.seq
    else:
        resumed = replacement.checkpoints.resumed_step if replacement and replacement.checkpoints else None
    return {
        "job_id": d["training_job"],
        "node": d["target"],
        "attempt": number,
        "killed_at": d["at"],
        "saved_step": step,
        "resumed_step": resumed,
        "epochs": int(record.spec.args.get("epochs", 0)) if record else None,
        "redone_epochs": redone,
        "work_lost_s": round(lost_s, 3),
        "dispatcher_work_lost_s": lost.work_lost_s if lost else None,
        "interval_s": round(interval, 3),
        "detection_s": detection_s,
        "bound_s": round(interval + detection_s, 3),
        "detected_after_s": round((lost.finished_at - killed_at).total_seconds(), 3)
        if lost and lost.finished_at else None,
    }


def training_work_lost(detection_s: float = 3.0, timeout_s: float = 120.0,
                       configuration: Configuration = None) -> list[dict[str, Any]]:
    """Every training failure of the run: the work lost by the pods' evidence (kill time minus the
    newest checkpoint made before it), the dispatcher's ``work_lost_s`` beside it, the checkpoint
    interval (the longest gap between the attempt's checkpoints, at least its pacing), the step
    saved at the kill and the step the replacement resumed from. Waits for the job to end."""
    state = RunState.load(configuration)
    kills = [d for d in state.disruptions if d["kind"] == "node_kill" and d.get("training_job")]

    async def go(client: JobqClient) -> list[dict[str, Any]]:
        await target.wait_terminal(client, [d["training_job"] for d in kills], timeout_s=timeout_s,
                                   configuration=configuration)
        found = []
        for d in kills:
            record = await client.get(d["training_job"])
            final = await evidence.pointer(client.js, d["training_job"])
            found.append(_judge(d, record, final, detection_s=float(detection_s)))
        return found

    figures = activity.on_stack(configuration, go)
    for f in figures:
        index = next(i for i, d in enumerate(state.disruptions) if d.get("at") == f["killed_at"])
        target.update_disruption(configuration, index, work_lost_s=f["work_lost_s"])
    target.log.info("chaos_work_lost", run_id=state.run_id, failures=figures)
    return figures


def work_lost_within_bound(detection_s: float = 3.0, timeout_s: float = 120.0,
                           configuration: Configuration = None) -> bool:
    """True when every training failure lost at most one checkpoint interval plus ``detection_s``
    of work, by the pods' evidence and by the dispatcher's figure alike (true before any failure)."""
    return all(
        f["work_lost_s"] <= f["bound_s"]
        and f["dispatcher_work_lost_s"] is not None and f["dispatcher_work_lost_s"] <= f["bound_s"]
        for f in training_work_lost(detection_s, timeout_s, configuration)
    )


def resumed_from_newest_checkpoint(timeout_s: float = 120.0, configuration: Configuration = None) -> bool:
    """True when every replacement of a killed training attempt resumed from the step that attempt
    had saved at the kill (nothing saved: it started from scratch) and really went on from there:
    the pointer it left shows one checkpoint per remaining epoch. True before any failure."""
    return all(
        f["resumed_step"] == f["saved_step"]
        and (f["saved_step"] is None or f["redone_epochs"] == f["epochs"] - f["saved_step"])
        for f in training_work_lost(timeout_s=timeout_s, configuration=configuration))
