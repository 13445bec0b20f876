"""What the long training tasks share: their arguments, the data split, and the epoch loop that
restores the job's newest checkpoint, then checkpoints and reports progress after every epoch.

A run resumed from the checkpoint of epoch k continues exactly as the unbroken run would: the
trainer's state holds everything its next epoch depends on, and each epoch's sample order comes
from ``(seed, epoch)`` alone (``epoch_order``), never from a global random generator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from workers import tasks
from workers.tasks import sklearn_tasks

KEYS = ("dataset", "epochs", "seed", "test_size", "checkpoint", "epoch_seconds")
"""The arguments every epoch-based task takes (each task adds its own)."""
MAX_EPOCHS = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class EpochArgs:
    dataset: str
    epochs: int
    seed: int
    test_size: float
    checkpoint: bool
    """False: neither restore nor checkpoint (every attempt starts from scratch)."""
    epoch_seconds: float
    """Pacing: sleep after an epoch that took less, so a job can be made long (tests, demos)."""


def epoch_args(args: Mapping[str, Any], *, default_epochs: int) -> EpochArgs:
    return EpochArgs(
        dataset=tasks.choice_arg(args, "dataset", default="digits", choices=sklearn_tasks.DATASETS),
        epochs=tasks.int_arg(args, "epochs", default=default_epochs, low=1, high=MAX_EPOCHS),
        seed=tasks.int_arg(args, "seed", default=0, low=0, high=2**32 - 1),
        test_size=tasks.float_arg(args, "test_size", default=0.25, low=0.05, high=0.9),
        checkpoint=tasks.bool_arg(args, "checkpoint", default=True),
        epoch_seconds=tasks.float_arg(args, "epoch_seconds", default=0.0, low=0, high=3600),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Split:
    """A stratified train/test split, standardised with the training part's mean and scale."""

    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any
    scaler: Any
    """The fitted StandardScaler (the first step of a stored pipeline)."""


def split(a: EpochArgs) -> Split:
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = sklearn_tasks._load(a.dataset)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=a.test_size, random_state=a.seed, stratify=y)
    scaler = StandardScaler().fit(x_train)
    return Split(scaler.transform(x_train), scaler.transform(x_test), y_train, y_test, scaler)


def epoch_order(seed: int, epoch: int, n: int) -> Any:
    """The order in which epoch ``epoch`` visits ``n`` training samples: a function of its
    arguments only, so a resumed run shuffles exactly as an unbroken one."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


def digest(arrays: Iterable[Any]) -> str:
    """SHA-256 of the arrays' bytes in order (a model's coefficients: equal models, equal digest)."""
    import numpy as np

    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


class Trainer(Protocol):
    def fit_epoch(self, epoch: int) -> None:
        """Train one more epoch (numbered from 1)."""

    def state(self, epoch: int) -> bytes:
        """Everything the epochs after ``epoch`` depend on, as bytes."""

    def load(self, state: bytes) -> int:
        """Continue from ``state`` (made by ``state``); return its epoch."""


@dataclasses.dataclass(frozen=True, slots=True)
class EpochReport:
    resumed_from: int | None
    """The epoch of the checkpoint this attempt started from; None: from scratch."""
    checkpoints: int
    """Checkpoints this attempt wrote."""
    epoch_seconds: float | None
    """Mean seconds of training per epoch this attempt ran (pacing left out); None if none ran."""


def run(ctx: tasks.TaskContext, a: EpochArgs, trainer: Trainer) -> EpochReport:
    """Restore (when checkpointing), then train the remaining epochs, checkpointing (step = the
    epoch) and reporting progress after each. ``tasks.Superseded`` from the context propagates:
    a newer attempt owns the job's checkpoints and this one must stop."""
    start, resumed_from = 0, None
    if a.checkpoint:
        restored = ctx.restore()
        if restored is not None:
            start = trainer.load(restored.state)
            if start != restored.step:
                raise RuntimeError(f"the checkpoint of step {restored.step} holds epoch {start}")
            resumed_from = start
            ctx.progress(start / a.epochs, f"resumed from epoch {start}/{a.epochs} "
                                           f"(checkpoint of attempt {restored.attempt})")
    written, trained = 0, []
    for epoch in range(start + 1, a.epochs + 1):
        began = time.monotonic()
        trainer.fit_epoch(epoch)
        trained.append(time.monotonic() - began)
        rest = a.epoch_seconds - (time.monotonic() - began)
        if rest > 0:
            time.sleep(rest)
        if a.checkpoint:
            ctx.checkpoint(trainer.state(epoch), step=epoch)
            written += 1
        ctx.progress(epoch / a.epochs, f"epoch {epoch}/{a.epochs}")
    mean = round(sum(trained) / len(trained), 4) if trained else None
    return EpochReport(resumed_from=resumed_from, checkpoints=written, epoch_seconds=mean)
