"""Built-in tasks called directly with an in-memory TaskContext; the registry and helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
from typing import Any

import pytest

from broker import contract
from workers import heartbeat, results, runner, tasks
from workers.tasks import demo_tasks, registry, sklearn_tasks


@dataclasses.dataclass
class FakeContext:
    """A TaskContext whose artifact store is a dict shared between 'jobs', keyed as the runner
    keys it (``contract.artifact_key``); another job's artifacts are read from its accepted
    attempt (``accepted``, shared too), as the runner reads them from the job's record."""

    job_id: str = "job-1"
    attempt: int = 1
    node: str | None = "node-a"
    artifacts: dict[str, bytes] = dataclasses.field(default_factory=dict)
    accepted: dict[str, int] = dataclasses.field(default_factory=dict)
    """Job id -> its accepted attempt (the record's ``result_attempt``)."""
    reports: list[tuple[float, str]] = dataclasses.field(default_factory=list)

    def progress(self, fraction: float, message: str = "") -> None:
        self.reports.append((fraction, message))

    def save_artifact(self, name: str, data: bytes) -> str:
        key = contract.artifact_key(self.job_id, self.attempt, name)
        self.artifacts[key] = bytes(data)
        return key

    def load_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        if job_id is None:
            attempt = self.attempt
        elif job_id in self.accepted:
            attempt = self.accepted[job_id]
        else:
            raise tasks.ArtifactNotFound(f"job {job_id} has no accepted result")
        key = contract.artifact_key(job_id or self.job_id, attempt, name)
        try:
            return self.artifacts[key]
        except KeyError:
            raise tasks.ArtifactNotFound(key) from None

    async def asave_artifact(self, name: str, data: bytes) -> str:
        return self.save_artifact(name, data)

    async def aload_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        return self.load_artifact(name, job_id=job_id)


# --- registry ---------------------------------------------------------------------------------


def test_registry_implements_exactly_the_contracts_builtin_tasks() -> None:
    assert set(registry.BUILTINS) == set(contract.BUILTIN_TASKS)


def test_resolve_finds_builtins_and_module_functions() -> None:
    assert registry.resolve("sklearn.train") is sklearn_tasks.train
    assert registry.resolve("workers.tasks.demo_tasks:flaky") is demo_tasks.flaky


@pytest.mark.parametrize("name", ["sklearn.nope", "no_such_module_xyz:run", "json:no_such_function",
                                  "json:JSONDecodeError.nope", ":run", "json:", "..relative:run"])
def test_resolve_rejects_unknown_tasks(name: str) -> None:
    with pytest.raises(registry.TaskNotFound):
        registry.resolve(name)


def test_bad_args_exit_code_is_the_runners() -> None:
    assert tasks.BadArgs("x").code == runner.EXIT_BAD_ARGS == 2
    assert runner.EXIT_TASK_NOT_FOUND == 3
    assert runner.EXIT_TASK_FAILED == 1
    assert runner.EXIT_NATS_UNREACHABLE == 4
    assert runner.EXIT_RESULT_EXISTS == contract.EXIT_RESULT_EXISTS == 5


# --- sklearn.train ----------------------------------------------------------------------------


def test_train_digits_logreg_is_accurate_and_stores_the_model() -> None:
    ctx = FakeContext(job_id="train-1")
    out = sklearn_tasks.train({}, ctx)
    assert out["dataset"] == "digits" and out["model"] == "logreg"
    assert out["accuracy"] > 0.9
    assert out["n_train"] + out["n_test"] == 1797
    assert out["artifact"] == "train-1/1/model.pkl"
    model = pickle.loads(ctx.artifacts["train-1/1/model.pkl"])
    assert model.n_features_in_ == 64
    assert ctx.reports and all(0 <= f <= 1 for f, _ in ctx.reports)
    json.dumps(out)


@pytest.mark.parametrize("dataset", sklearn_tasks.DATASETS)
@pytest.mark.parametrize("model", sklearn_tasks.MODELS)
def test_train_every_model_on_every_dataset(dataset: str, model: str) -> None:
    out = sklearn_tasks.train({"dataset": dataset, "model": model, "seed": 1}, FakeContext())
    assert out["accuracy"] > 0.8
    assert out["fit_seconds"] < 5


def test_train_passes_params_to_the_model() -> None:
    ctx = FakeContext()
    sklearn_tasks.train({"dataset": "iris", "model": "random_forest", "params": {"n_estimators": 7}}, ctx)
    model = pickle.loads(ctx.artifacts["job-1/1/model.pkl"])
    assert len(model.named_steps["model"].estimators_) == 7


@pytest.mark.parametrize("args", [
    {"dataset": "mnist"},
    {"model": "xgboost"},
    {"test_size": 2},
    {"seed": "zero"},
    {"typo_size": 0.3},
    {"params": [1, 2]},
    {"params": {"no_such_param": 1}},
    {"model": "logreg", "params": {"C": -1.0}, "dataset": "iris"},
])
def test_train_rejects_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(tasks.BadArgs) as caught:
        sklearn_tasks.train(args, FakeContext())
    assert caught.value.code == 2


# --- sklearn.evaluate / sweep -----------------------------------------------------------------


def test_evaluate_cross_validates() -> None:
    ctx = FakeContext()
    out = sklearn_tasks.evaluate({"dataset": "iris", "model": "svc", "folds": 4}, ctx)
    assert len(out["scores"]) == 4
    assert out["mean_accuracy"] > 0.9
    assert out["std_accuracy"] >= 0
    assert math.isclose(out["mean_accuracy"], sum(out["scores"]) / 4)
    assert [f for f, _ in ctx.reports] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("folds", [1, 21, 2.5])
def test_evaluate_rejects_bad_folds(folds: float) -> None:
    with pytest.raises(tasks.BadArgs, match="folds"):
        sklearn_tasks.evaluate({"dataset": "iris", "folds": folds}, FakeContext())


def test_sweep_default_grid_reports_progress_per_candidate() -> None:
    ctx = FakeContext()
    out = sklearn_tasks.sweep({"dataset": "wine", "model": "knn"}, ctx)
    assert out["n_candidates"] == 3
    assert out["best_params"]["n_neighbors"] in (3, 5, 9)
    assert out["best_score"] == max(r["mean_accuracy"] for r in out["results"])
    assert out["best_score"] > 0.9
    assert [round(f, 3) for f, _ in ctx.reports] == [0.333, 0.667, 1.0]
    json.dumps(out)


def test_sweep_custom_grid() -> None:
    grid = {"C": [0.1, 1.0], "kernel": ["linear", "rbf"]}
    out = sklearn_tasks.sweep({"dataset": "iris", "model": "svc", "grid": grid, "folds": 3}, FakeContext())
    assert out["n_candidates"] == 4
    assert set(out["best_params"]) == {"C", "kernel"}


@pytest.mark.parametrize("grid", [{"C": []}, {"C": 1.0}, {"C": list(range(1, 102))}, {"nope": [1]}])
def test_sweep_rejects_bad_grids(grid: dict[str, Any]) -> None:
    with pytest.raises(tasks.BadArgs):
        sklearn_tasks.sweep({"dataset": "iris", "model": "svc", "grid": grid}, FakeContext())


# --- sklearn.predict --------------------------------------------------------------------------


def test_predict_round_trips_a_model_saved_by_train() -> None:
    store: dict[str, bytes] = {}
    trained = sklearn_tasks.train({"model": "svc"}, FakeContext(job_id="train-1", artifacts=store))
    ctx = FakeContext(job_id="predict-1", artifacts=store, accepted={"train-1": 1})
    out = sklearn_tasks.predict({"model_job": "train-1", "limit": 300}, ctx)
    assert out["n_predictions"] == 300
    assert out["accuracy"] > trained["accuracy"] - 0.05
    assert sum(out["class_counts"].values()) == 300
    assert set(out["class_counts"]) <= {str(d) for d in range(10)}
    assert out["artifact"] == "predict-1/1/predictions.json"
    document = json.loads(store["predict-1/1/predictions.json"])
    assert document["model_job"] == "train-1" and len(document["predictions"]) == 300


def test_predict_on_the_whole_dataset_by_default() -> None:
    store: dict[str, bytes] = {}
    sklearn_tasks.train({"dataset": "iris", "model": "knn"}, FakeContext(job_id="t", artifacts=store))
    out = sklearn_tasks.predict({"model_job": "t", "dataset": "iris"},
                                FakeContext(artifacts=store, accepted={"t": 1}))
    assert out["n_predictions"] == 150
    assert out["accuracy"] > 0.9


def test_predict_needs_a_trained_model() -> None:
    with pytest.raises(tasks.ArtifactNotFound):
        sklearn_tasks.predict({"model_job": "never-trained"}, FakeContext())


def test_predict_loads_the_model_of_the_accepted_attempt_only() -> None:
    store: dict[str, bytes] = {}
    # Attempt 1 of "t" (superseded, still running) stored an iris model after attempt 2 stored a
    # digits model; attempt 2's result is the accepted one.
    sklearn_tasks.train({"dataset": "digits"}, FakeContext(job_id="t", attempt=2, artifacts=store))
    sklearn_tasks.train({"dataset": "iris"}, FakeContext(job_id="t", attempt=1, artifacts=store))
    assert {"t/1/model.pkl", "t/2/model.pkl"} <= set(store)
    out = sklearn_tasks.predict({"model_job": "t", "dataset": "digits"},
                                FakeContext(artifacts=store, accepted={"t": 2}))
    assert out["n_predictions"] == 1797 and out["accuracy"] > 0.9
    with pytest.raises(tasks.BadArgs, match="features"):  # the stale model would be iris's
        sklearn_tasks.predict({"model_job": "t", "dataset": "digits"},
                              FakeContext(artifacts=store, accepted={"t": 1}))


@pytest.mark.parametrize("args", [{}, {"model_job": "Not A Job"}, {"model_job": "t", "limit": 0}])
def test_predict_rejects_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(tasks.BadArgs):
        sklearn_tasks.predict(args, FakeContext())


def test_predict_rejects_a_dataset_the_model_was_not_trained_on() -> None:
    store: dict[str, bytes] = {}
    sklearn_tasks.train({"dataset": "iris"}, FakeContext(job_id="t", artifacts=store))
    with pytest.raises(tasks.BadArgs, match="features"):
        sklearn_tasks.predict({"model_job": "t", "dataset": "wine"},
                              FakeContext(artifacts=store, accepted={"t": 1}))


# --- demo tasks -------------------------------------------------------------------------------


async def test_demo_sleep_reports_each_step() -> None:
    ctx = FakeContext()
    out = await demo_tasks.sleep({"seconds": 0.05, "progress_steps": 4}, ctx)
    assert out == {"slept_s": 0.05, "steps": 4}
    assert [f for f, _ in ctx.reports] == [0.25, 0.5, 0.75, 1.0]


def test_demo_flaky_fails_until_its_attempt() -> None:
    with pytest.raises(RuntimeError, match="on purpose"):
        demo_tasks.flaky({"succeed_on": 2}, FakeContext(attempt=1))
    assert demo_tasks.flaky({"succeed_on": 2}, FakeContext(attempt=2)) == {"attempt": 2, "succeed_on": 2}
    assert demo_tasks.flaky({}, FakeContext(attempt=3))["attempt"] == 3


def test_demo_exit_raises_task_exit_with_the_code() -> None:
    with pytest.raises(tasks.TaskExit) as caught:
        demo_tasks.exit_with({"code": 7}, FakeContext())
    assert caught.value.code == 7
    assert demo_tasks.exit_with({"code": 0}, FakeContext()) == {"code": 0}


@pytest.mark.parametrize("args", [{}, {"code": 256}, {"code": -1}, {"code": True}, {"code": "7"}])
def test_demo_exit_rejects_bad_codes(args: dict[str, Any]) -> None:
    with pytest.raises(tasks.BadArgs):
        demo_tasks.exit_with(args, FakeContext())


def test_demo_hog_holds_memory() -> None:
    ctx = FakeContext()
    assert demo_tasks.hog({"mb": 8, "seconds": 0.05}, ctx) == {"mb": 8, "held_s": 0.05}
    assert ctx.reports[-1][0] == 1.0
    with pytest.raises(tasks.BadArgs):
        demo_tasks.hog({}, ctx)


def test_demo_echo_size_reports_what_it_received() -> None:
    assert demo_tasks.echo_size({"data": "héllo"}, FakeContext()) == {
        "chars": 5, "bytes": 6, "sha256": hashlib.sha256("héllo".encode()).hexdigest()}
    assert demo_tasks.echo_size({}, FakeContext())["bytes"] == 0
    with pytest.raises(tasks.BadArgs):
        demo_tasks.echo_size({"data": 3}, FakeContext())
    with pytest.raises(tasks.BadArgs):
        demo_tasks.echo_size({"other": "x"}, FakeContext())


# --- helpers ----------------------------------------------------------------------------------


def test_arg_helpers() -> None:
    assert tasks.int_arg({}, "n", default=3) == 3
    assert tasks.float_arg({"x": 2}, "x", default=1.0) == 2.0
    with pytest.raises(tasks.BadArgs, match="'n'"):
        tasks.int_arg({"n": 1.5}, "n", default=3)
    with pytest.raises(tasks.BadArgs, match="within"):
        tasks.float_arg({"x": -1}, "x", default=1.0, low=0)
    with pytest.raises(ValueError):
        tasks.TaskExit(300)


def test_progress_reporter_clamps_and_rejects_nan() -> None:
    progress = heartbeat.ProgressReporter()
    assert progress.snapshot() == (None, "")
    progress.report(1.5, "x" * 1000)
    fraction, message = progress.snapshot()
    assert fraction == 1.0 and len(message) == heartbeat.MAX_MESSAGE_CHARS
    progress.report(-1)
    assert progress.snapshot() == (0.0, "")
    with pytest.raises(ValueError):
        progress.report(float("nan"))


def test_jsonable_output() -> None:
    assert results.jsonable({"a": (1, 2)}) == {"a": [1, 2]}
    for bad in ({"a": {1, 2}}, {"a": float("nan")}, [1, 2], None):
        with pytest.raises((TypeError, ValueError)):
            results.jsonable(bad)


@pytest.mark.parametrize("name", ["job-1/model.pkl", "a/b/c.json"])
def test_artifact_names_accepted(name: str) -> None:
    results.check_artifact_name(name)


@pytest.mark.parametrize(
    "name", ["", "/abs", "a//b", "a/../b", "sp ace", "a/", ".checkpoint/1", "a/.checkpoint"]
)
def test_artifact_names_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        results.check_artifact_name(name)


def test_checkpoint_objects_are_object_keys_but_no_artifact_names() -> None:
    key = contract.checkpoint_object_key("job-1", 2, 3)
    results.check_object_key(key)
    with pytest.raises(ValueError, match="reserved for the job's checkpoints"):
        results.check_artifact_name(key.split("/", 2)[2])
    results.check_artifact_name("a/.checkpoints/b")  # only the segment itself is reserved


def test_object_digest_is_the_object_stores_form() -> None:
    # sha256(b"abc"), url-safe base64, as nats-py's object store records it in ObjectInfo.digest.
    assert results.object_digest(b"abc") == "SHA-256=ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0="


def test_superseded_exits_6() -> None:
    exit_ = tasks.Superseded("attempt 3 owns the checkpoints")
    assert isinstance(exit_, tasks.TaskExit) and exit_.code == contract.EXIT_SUPERSEDED == 6
