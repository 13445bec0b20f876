"""``sklearn.train_incremental``: a classifier trained by ``partial_fit``, one epoch at a time,
checkpointing every epoch (``workers.tasks.epochs``).

A run resumed from epoch k's checkpoint ends with the very model an unbroken run of the same
arguments ends with, bit for bit (``model_digest`` in the result): the checkpoint is the pickled
estimator (its coefficients, step counters and optimiser state) and each epoch's sample order
comes from ``(seed, epoch)``; the estimators shuffle nothing themselves.
"""

from __future__ import annotations

import pickle
from typing import Any

from workers import tasks
from workers.tasks import epochs, sklearn_tasks

MODELS = ("sgd", "mlp")
STATE_FORMAT = 1


def train_incremental(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` epochs on a bundled data set; store the fitted pipeline
    (``scale`` then ``model``, as ``sklearn.train`` stores it, so ``sklearn.predict`` can use it)."""
    tasks.check_keys(args, (*epochs.KEYS, "model"))
    a = epochs.epoch_args(args, default_epochs=20)
    model = tasks.choice_arg(args, "model", default="sgd", choices=MODELS)
    import numpy as np
    from sklearn.pipeline import Pipeline

    ctx.progress(0.0, f"loading {a.dataset}")
    data = epochs.split(a)
    trainer = _PartialFit(_estimator(model, a.seed), data, np.unique(data.y_train), seed=a.seed)
    report = epochs.run(ctx, a, trainer)
    estimator = trainer.estimator
    accuracy = float(estimator.score(data.x_test, data.y_test))
    pipeline = Pipeline([("scale", data.scaler), ("model", estimator)])
    artifact = ctx.save_artifact(sklearn_tasks.MODEL_ARTIFACT,
                                 pickle.dumps(pipeline, pickle.HIGHEST_PROTOCOL))
    return {"dataset": a.dataset, "model": model, "epochs": a.epochs, "accuracy": accuracy,
            "resumed_from": report.resumed_from, "checkpoints": report.checkpoints,
            "epoch_seconds": report.epoch_seconds, "model_digest": model_digest(estimator),
            "n_train": len(data.y_train), "n_test": len(data.y_test), "artifact": artifact}


def model_digest(estimator: Any) -> str:
    """SHA-256 of the estimator's coefficients and intercepts (SGD: ``coef_``, ``intercept_``;
    MLP: ``coefs_``, ``intercepts_``)."""
    if hasattr(estimator, "coefs_"):
        return epochs.digest([*estimator.coefs_, *estimator.intercepts_])
    return epochs.digest([estimator.coef_, estimator.intercept_])


class _PartialFit:
    def __init__(self, estimator: Any, data: epochs.Split, classes: Any, *, seed: int) -> None:
        self.estimator = estimator
        self._data = data
        self._classes = classes
        self._seed = seed

    def fit_epoch(self, epoch: int) -> None:
        order = epochs.epoch_order(self._seed, epoch, len(self._data.y_train))
        self.estimator.partial_fit(self._data.x_train[order], self._data.y_train[order],
                                   classes=self._classes)

    def state(self, epoch: int) -> bytes:
        return pickle.dumps({"format": STATE_FORMAT, "epoch": epoch, "estimator": self.estimator},
                            pickle.HIGHEST_PROTOCOL)

    def load(self, state: bytes) -> int:
        saved = pickle.loads(state)  # the job's own checkpoint, checked against its pointer's digest
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise RuntimeError("the checkpoint is not one of sklearn.train_incremental's")
        self.estimator = saved["estimator"]
        epoch: int = saved["epoch"]
        return epoch


def _estimator(model: str, seed: int) -> Any:
    if model == "sgd":
        from sklearn.linear_model import SGDClassifier
        return SGDClassifier(loss="log_loss", random_state=seed, shuffle=False)
    from sklearn.neural_network import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=(64,), batch_size=32, random_state=seed, shuffle=False)

