"""The demo's long training job: ``sklearn.train_incremental`` over paced epochs, a checkpoint
after each one. With ``--kill-node`` the demo kills the node it runs on once a few epochs are done,
and the summary tells, from the job's record, from which epoch the replacement resumed and how
much work the node loss threw away (``Attempt.checkpoints``, ``Attempt.work_lost_s``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from broker import contract

TASK = "sklearn.train_incremental"
EPOCHS = 16
EPOCH_SECONDS = 1.0
"""16 epochs paced at 1 s: long enough to be hit mid-run, short enough for a quick demo."""
KILL_AFTER_EPOCHS = 5
"""Kill its node once the job has saved the checkpoint of this epoch (or a later one)..."""
KILL_INTO_EPOCH = 0.6
"""... this far (in epochs) after its newest checkpoint: part-way through the next epoch."""


def spec(run_id: str) -> dict[str, Any]:
    return {"id": f"{run_id}-train-long", "task": TASK, "profile": "small", "labels": {"demo": run_id},
            "args": {"dataset": "digits", "epochs": EPOCHS, "epoch_seconds": EPOCH_SECONDS, "seed": 7,
                     "checkpoint": True}}


def kill_in(live: contract.AttemptCheckpoints | None, now: dt.datetime) -> float | None:
    """Seconds from ``now`` to the kill, given the running attempt's live checkpoint; None: not
    yet (too few epochs saved, or the moment after the newest one has passed: wait for the next)."""
    if live is None or live.step is None or live.at is None or live.step < KILL_AFTER_EPOCHS:
        return None
    wait = (live.at - now).total_seconds() + KILL_INTO_EPOCH * EPOCH_SECONDS
    return wait if wait >= 0 else None


def summarize(record: contract.JobRecord | None, *,
              killed: tuple[str, dt.datetime] | None) -> dict[str, Any]:
    """What the record says about the training job: its attempts' nodes, and for the attempt lost
    with the killed node the epoch it had saved, the replacement's resumed epoch, the work lost:
    ``lost_s`` from the demo's own kill time to the newest checkpoint, ``work_lost_s`` as the
    dispatcher recorded it (from the attempt's last sign of life: a lower bound)."""
    if record is None:
        return {"job_id": None}
    killed_node, killed_at = killed if killed is not None else (None, None)
    out: dict[str, Any] = {"job_id": record.spec.id, "phase": record.phase.value,
                           "nodes": [a.node for a in record.attempts],
                           "interval_s": float(record.spec.args.get("epoch_seconds", EPOCH_SECONDS))}
    for i, lost in enumerate(record.attempts[:-1]):
        if lost.node != killed_node or lost.reason is None or not lost.reason.is_disruption:
            continue
        replacement = record.attempts[i + 1]
        out.update(
            lost_node=lost.node,
            saved_epoch=lost.checkpoints.step if lost.checkpoints else None,
            resumed_epoch=replacement.checkpoints.resumed_step if replacement.checkpoints else None,
            resumed_on=replacement.node,
            work_lost_s=lost.work_lost_s,
            lost_s=(round((killed_at - lost.checkpoints.at).total_seconds(), 2)
                    if killed_at is not None and lost.checkpoints and lost.checkpoints.at else None),
        )
        break
    return out


def line(train: dict[str, Any]) -> str | None:
    """The summary's line, e.g. ``train-long: node node-2 lost during epoch 9 (last checkpoint:
    epoch 8); resumed from epoch 8 on node-1; work lost 0.7 s (checkpoint every 1.0 s)``."""
    if not train.get("job_id"):
        return None
    name = "train-long"
    if "lost_node" not in train:
        nodes = ", ".join(str(n) for n in train["nodes"])
        return f"{name}: {train['phase']} on {nodes} (not hit by the kill)"
    saved, resumed = train.get("saved_epoch"), train.get("resumed_epoch")
    during = f"during epoch {saved + 1} (last checkpoint: epoch {saved})" if saved is not None \
        else "before its first checkpoint"
    start = f"resumed from epoch {resumed}" if resumed is not None else "restarted from scratch"
    lost, recorded = train.get("lost_s"), train.get("work_lost_s")
    lost_text = f"{lost:.1f} s since that checkpoint at the kill" if lost is not None else "unknown"
    if recorded is not None:
        lost_text += f", dispatcher recorded {recorded:.1f} s"
    return (f"{name}: node {train['lost_node']} lost {during}; {start} on {train['resumed_on']}; "
            f"work lost {lost_text} (checkpoint every {train['interval_s']:.1f} s); {train['phase']}")
