"""``tf.train``: a small Keras network (one hidden Dense layer) trained epoch by epoch on a data
set bundled with scikit-learn, checkpointing every epoch (``workers.tasks.epochs``).

TensorFlow is the optional extra ``tf`` (``pip install 'jobq[tf]'``), imported inside the task
(~700 MB resident once imported: the catalogue gives ``tf.train`` the ``medium`` profile). On a
node without it the task exits 2 (``TensorFlowMissing``), which the dispatcher never retries.

The checkpoint is the weights, the optimiser's variables and the epoch, as one ``.npz``; each
epoch's sample order comes from ``(seed, epoch)``, and TensorFlow runs deterministic ops on one
thread, so a resumed run ends with the accuracy of an unbroken one (within ``ACCURACY_TOLERANCE``;
on one machine and TensorFlow version the weights come out equal).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from workers import tasks
from workers.tasks import epochs

MODEL_ARTIFACT = "model.keras"
HIDDEN_UNITS = 64
BATCH_SIZE = 32
ACCURACY_TOLERANCE = 0.02
"""How far a resumed run's test accuracy may be from an unbroken run's of the same arguments."""


class TensorFlowMissing(tasks.BadArgs):
    """TensorFlow is not installed on this node: exit 2, not worth retrying."""


def train(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Train for ``epochs`` epochs; store the model as ``model.keras``; return its test accuracy."""
    tasks.check_keys(args, epochs.KEYS)
    a = epochs.epoch_args(args, default_epochs=10)
    ctx.progress(0.0, "importing TensorFlow")
    tf = _tensorflow(ctx.node)
    import numpy as np

    ctx.progress(0.0, f"loading {a.dataset}")
    data = epochs.split(a)
    classes = np.unique(data.y_train)
    trainer = _KerasTrainer(tf, data, len(classes), seed=a.seed)
    report = epochs.run(ctx, a, trainer)
    accuracy = trainer.accuracy()
    artifact = ctx.save_artifact(MODEL_ARTIFACT, trainer.model_bytes())
    return {"dataset": a.dataset, "epochs": a.epochs, "accuracy": accuracy,
            "resumed_from": report.resumed_from, "checkpoints": report.checkpoints,
            "epoch_seconds": report.epoch_seconds, "model_digest": epochs.digest(trainer.model.get_weights()),
            "n_train": len(data.y_train), "n_test": len(data.y_test), "tensorflow": tf.__version__,
            "artifact": artifact}


def _tensorflow(node: str | None) -> Any:
    """TensorFlow, quiet and on one thread, or TensorFlowMissing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info/warning lines on stderr
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN's kernels reorder float sums
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise TensorFlowMissing(f"tf.train needs TensorFlow, which is not installed on node "
                                f"{node or '(unknown)'}: install the jobq[tf] extra") from exc
    try:  # the medium profile is one CPU; settable only before TensorFlow's runtime starts
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # started already: a second task in this process (tests)
        pass
    tf.config.experimental.enable_op_determinism()
    return tf


class _KerasTrainer:
    def __init__(self, tf: Any, data: epochs.Split, n_classes: int, *, seed: int) -> None:
        keras = tf.keras
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)  # the initial weights
        self._tf = tf
        self._data = data
        self._seed = seed
        self._x_train = data.x_train.astype("float32")
        self._x_test = data.x_test.astype("float32")
        self.model = keras.Sequential([
            keras.Input(shape=(self._x_train.shape[1],)),
            keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ])
        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                           loss="sparse_categorical_crossentropy")
        self.model.optimizer.build(self.model.trainable_variables)  # its variables exist to restore

    def fit_epoch(self, epoch: int) -> None:
        order = epochs.epoch_order(self._seed, epoch, len(self._data.y_train))
        for begin in range(0, len(order), BATCH_SIZE):  # no model.fit: its tf.data pipeline is slower
            rows = order[begin:begin + BATCH_SIZE]
            self.model.train_on_batch(self._x_train[rows], self._data.y_train[rows])

    def state(self, epoch: int) -> bytes:
        import numpy as np

        arrays: dict[str, Any] = {"epoch": np.array(epoch)}
        arrays.update({f"w{i}": w for i, w in enumerate(self.model.get_weights())})
        arrays.update({f"o{i}": v.numpy() for i, v in enumerate(self.model.optimizer.variables)})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def load(self, state: bytes) -> int:
        import numpy as np

        with np.load(io.BytesIO(state), allow_pickle=False) as saved:
            weights = [saved[f"w{i}"] for i in range(len(self.model.get_weights()))]
            variables = self.model.optimizer.variables
            if len(saved.files) != 1 + len(weights) + len(variables):
                raise RuntimeError("the checkpoint does not fit this model and optimiser")
            self.model.set_weights(weights)
            for i, variable in enumerate(variables):
                variable.assign(saved[f"o{i}"])
            return int(saved["epoch"])

    def accuracy(self) -> float:
        import numpy as np

        predicted = np.argmax(self.model(self._x_test, training=False).numpy(), axis=1)
        return float(np.mean(predicted == self._data.y_test))

    def model_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory(prefix="jobq-tf-") as tmp, warnings.catch_warnings():
            # Keras saves TensorFlow variables through numpy 2's deprecated __array__ protocol.
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            path = Path(tmp) / MODEL_ARTIFACT
            self.model.save(path)
            return path.read_bytes()
