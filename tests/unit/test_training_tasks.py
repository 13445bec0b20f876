"""The long training tasks (sklearn.train_incremental, tf.train) called directly, with an in-memory
context that keeps the job's checkpoints; their resource profile in the catalogue.

An attempt "dies" after writing the checkpoint of epoch k (``die_after``); the next attempt of the
job restores it. The checkpoint logic of the runner (fencing, the store) is tested with it."""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker import contract
from broker.dispatcher import limits as dispatcher_limits
from broker.dispatcher import pod_spec
from tests.unit.test_tasks import FakeContext
from workers import tasks
from workers.tasks import epochs, incremental_tasks, sklearn_tasks, tf_tasks


class Died(Exception):
    """The attempt's node went away (raised right after a checkpoint)."""


@dataclasses.dataclass
class CheckpointContext(FakeContext):
    """FakeContext plus the job's newest checkpoint, shared by the attempts given the same dict."""

    checkpoints: dict[str, tasks.Restored] = dataclasses.field(default_factory=dict)
    die_after: int | None = None
    """Raise Died right after the checkpoint of this step."""
    superseded: bool = False
    """A newer attempt owns the checkpoints: restore and checkpoint raise Superseded."""
    calls: list[str] = dataclasses.field(default_factory=list)

    def checkpoint(self, state: bytes, *, step: int) -> None:
        self.calls.append(f"checkpoint {step}")
        if self.superseded:
            raise tasks.Superseded("attempt 9 owns the checkpoints")
        self.checkpoints[self.job_id] = tasks.Restored(bytes(state), step, self.attempt)
        if step == self.die_after:
            raise Died(step)

    def restore(self) -> tasks.Restored | None:
        self.calls.append("restore")
        if self.superseded:
            raise tasks.Superseded("attempt 9 owns the checkpoints")
        return self.checkpoints.get(self.job_id)

    async def acheckpoint(self, state: bytes, *, step: int) -> None:
        self.checkpoint(state, step=step)

    async def arestore(self) -> tasks.Restored | None:
        return self.restore()


def unbroken_and_resumed(task: Any, args: dict[str, Any], *, die_after: int
                         ) -> tuple[dict[str, Any], CheckpointContext, dict[str, Any], CheckpointContext]:
    """An unbroken run (output, context) and attempt 2 of a job whose attempt 1 died right after
    checkpointing epoch ``die_after`` (output, context)."""
    whole_ctx = CheckpointContext(job_id="whole")
    whole = task(args, whole_ctx)
    shared: dict[str, tasks.Restored] = {}
    with pytest.raises(Died):
        task(args, CheckpointContext(job_id="broken", checkpoints=shared, die_after=die_after))
    assert shared["broken"].step == die_after
    ctx = CheckpointContext(job_id="broken", attempt=2, checkpoints=shared)
    return whole, whole_ctx, task(args, ctx), ctx


# --- sklearn.train_incremental ----------------------------------------------------------------


@pytest.mark.parametrize(("model", "die_after"), [("sgd", 1), ("sgd", 7), ("mlp", 4)])
def test_incremental_resumed_run_ends_with_the_unbroken_runs_model(model: str, die_after: int) -> None:
    args = {"model": model, "epochs": 8, "seed": 11}
    whole, whole_ctx, resumed, ctx = unbroken_and_resumed(incremental_tasks.train_incremental, args,
                                                           die_after=die_after)
    assert (whole["resumed_from"], resumed["resumed_from"]) == (None, die_after)
    assert (whole["checkpoints"], resumed["checkpoints"]) == (8, 8 - die_after)
    assert resumed["model_digest"] == whole["model_digest"]
    # The stored models themselves, bit for bit, not only the digest the task reports.
    ours = pickle.loads(ctx.artifacts["broken/2/model.pkl"]).named_steps["model"]
    theirs = pickle.loads(whole_ctx.artifacts["whole/1/model.pkl"]).named_steps["model"]
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(ours), _arrays(theirs), strict=True))
    assert resumed["accuracy"] == whole["accuracy"] > 0.9
    assert ctx.calls[0] == "restore" and ctx.calls[1:] == [f"checkpoint {e}" for e in range(die_after + 1, 9)]
    messages = [m for _, m in ctx.reports]
    assert f"resumed from epoch {die_after}/8 (checkpoint of attempt 1)" in messages
    assert messages[-1] == "epoch 8/8"
    assert [f for f, m in ctx.reports if m.startswith("epoch")] == [e / 8 for e in range(die_after + 1, 9)]


def _arrays(estimator: Any) -> list[Any]:
    if hasattr(estimator, "coefs_"):
        return [*estimator.coefs_, *estimator.intercepts_]
    return [estimator.coef_, estimator.intercept_]


def test_incremental_seed_decides_the_model() -> None:
    one = incremental_tasks.train_incremental({"epochs": 3, "seed": 1}, CheckpointContext())
    two = incremental_tasks.train_incremental({"epochs": 3, "seed": 2}, CheckpointContext())
    assert one["model_digest"] != two["model_digest"]


def test_incremental_without_checkpoints_starts_from_scratch() -> None:
    """The negative control: ``checkpoint: false`` neither restores nor checkpoints."""
    shared = {"job-1": tasks.Restored(b"not a checkpoint", 3, 1)}
    ctx = CheckpointContext(attempt=2, checkpoints=shared)
    out = incremental_tasks.train_incremental({"epochs": 4, "checkpoint": False}, ctx)
    assert ctx.calls == []
    assert (out["resumed_from"], out["checkpoints"]) == (None, 0)
    assert [m for _, m in ctx.reports][-4:] == ["epoch 1/4", "epoch 2/4", "epoch 3/4", "epoch 4/4"]


def test_incremental_model_serves_sklearn_predict() -> None:
    store: dict[str, bytes] = {}
    trained = incremental_tasks.train_incremental({"model": "mlp", "epochs": 5},
                                                  CheckpointContext(job_id="inc", artifacts=store))
    out = sklearn_tasks.predict({"model_job": "inc"}, FakeContext(artifacts=store, accepted={"inc": 1}))
    assert out["n_predictions"] == 1797
    assert out["accuracy"] > trained["accuracy"] - 0.05


def test_incremental_paces_short_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(epochs.time, "sleep", slept.append)
    incremental_tasks.train_incremental({"dataset": "iris", "epochs": 3, "epoch_seconds": 30},
                                        CheckpointContext())
    assert len(slept) == 3 and all(0 < s <= 30 for s in slept)


def test_incremental_stops_when_superseded() -> None:
    ctx = CheckpointContext(superseded=True)
    with pytest.raises(tasks.Superseded) as caught:
        incremental_tasks.train_incremental({"epochs": 3}, ctx)
    assert caught.value.code == contract.EXIT_SUPERSEDED
    assert ctx.calls == ["restore"] and ctx.artifacts == {}


@pytest.mark.parametrize("args", [
    {"dataset": "mnist"}, {"model": "svc"}, {"epochs": 0}, {"epochs": 10_001}, {"epochs": "5"},
    {"epochs": 2.5}, {"seed": -1}, {"checkpoint": "yes"}, {"checkpoint": 1}, {"epoch_seconds": -1},
    {"epoch_seconds": "1"}, {"test_size": 0.95}, {"params": {}},
])
def test_incremental_rejects_bad_args(args: dict[str, Any]) -> None:
    ctx = CheckpointContext()
    with pytest.raises(tasks.BadArgs) as caught:
        incremental_tasks.train_incremental(args, ctx)
    assert caught.value.code == contract.EXIT_BAD_ARGS
    assert ctx.calls == []


# --- tf.train ---------------------------------------------------------------------------------


@pytest.mark.slow  # imports TensorFlow: ~10 s and ~700 MB the first time in a process
def test_tf_resumed_run_reaches_the_unbroken_runs_accuracy(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (the tf extra)")
    args = {"epochs": 4, "seed": 5}
    whole, whole_ctx, resumed, ctx = unbroken_and_resumed(tf_tasks.train, args, die_after=2)
    assert (whole["resumed_from"], resumed["resumed_from"]) == (None, 2)
    assert (whole["checkpoints"], resumed["checkpoints"]) == (4, 2)
    assert whole["accuracy"] > 0.9
    assert abs(resumed["accuracy"] - whole["accuracy"]) <= tf_tasks.ACCURACY_TOLERANCE
    assert ctx.calls == ["restore", "checkpoint 3", "checkpoint 4"]
    assert [m for _, m in ctx.reports][-1] == "epoch 4/4"
    # The stored .keras models load, and their weights agree closely (one thread, deterministic
    # ops: on one machine they are equal; the promise is the accuracy's tolerance).
    import tensorflow as tf

    weights = []
    for name, artifacts in (("whole/1/model.keras", whole_ctx.artifacts),
                            ("broken/2/model.keras", ctx.artifacts)):
        path = tmp_path / name.replace("/", "-")
        path.write_bytes(artifacts[name])
        weights.append(tf.keras.models.load_model(path).get_weights())
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*weights, strict=True))


def test_tf_without_tensorflow_fails_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow: ImportError
    ctx = CheckpointContext(node="node-b")
    with pytest.raises(tasks.BadArgs) as caught:
        tf_tasks.train({"epochs": 2}, ctx)
    assert caught.value.code == contract.EXIT_BAD_ARGS  # the dispatcher's non_retryable
    assert str(caught.value) == ("tf.train needs TensorFlow, which is not installed on node node-b: "
                                 "install the jobq[tf] extra")
    assert ctx.calls == []


@pytest.mark.parametrize("args", [{"epochs": 0}, {"model": "mlp"}, {"checkpoint": "no"}, {"dataset": "x"}])
def test_tf_rejects_bad_args_before_importing_tensorflow(monkeypatch: pytest.MonkeyPatch,
                                                          args: dict[str, Any]) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(tasks.BadArgs) as caught:
        tf_tasks.train(args, CheckpointContext())
    assert not isinstance(caught.value, tf_tasks.TensorFlowMissing)


# --- resource profile -------------------------------------------------------------------------


def test_every_builtin_task_names_a_profile() -> None:
    assert {t.profile for t in contract.BUILTIN_TASKS.values()} <= set(contract.PROFILES)


def test_tf_train_gets_the_medium_profile_unless_the_job_says_otherwise() -> None:
    def spec(**fields: Any) -> contract.JobSpec:
        return contract.JobSpec(id="j", **fields)

    assert spec(task="tf.train").requests == contract.PROFILES["medium"]
    assert contract.PROFILES["medium"].memory_bytes > contract.PROFILES["small"].memory_bytes
    assert spec(task="sklearn.train_incremental").requests == contract.PROFILES["small"]
    assert spec(task="workers.tasks.tf_tasks:train").requests == contract.PROFILES["small"]
    assert spec(task="tf.train", profile="large").requests == contract.PROFILES["large"]
    own = contract.Resources(cpu=2, memory="3Gi")
    assert spec(task="tf.train", resources=own).requests == own
    # The operator's override of the medium profile applies to tf.train's default.
    bigger = contract.Resources(cpu=1, memory="3Gi")
    limits = dispatcher_limits.Limits(profiles={"medium": bigger})
    assert pod_spec.requests(spec(task="tf.train"), limits) == bigger
    assert pod_spec.requests(spec(task="sklearn.train"), limits) == contract.PROFILES["small"]
