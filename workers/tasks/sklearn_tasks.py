"""Built-in scikit-learn tasks on the data sets that ship with scikit-learn (no downloads).

Every model is a two-step pipeline, ``scale`` (StandardScaler) then ``model``; ``params`` and
sweep grids name the ``model`` step's parameters without a prefix. scikit-learn is imported
inside the functions so that importing this module (and so the task registry) stays cheap.
Trained models are stored as pickles: load them only from an artifact store you trust.
"""

from __future__ import annotations

import json
import pickle
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from broker import contract
from workers import tasks

DATASETS = ("digits", "iris", "wine", "breast_cancer")
MODELS = ("logreg", "random_forest", "svc", "knn")
DEFAULT_GRIDS: Mapping[str, Mapping[str, Sequence[Any]]] = {
    "logreg": {"C": [0.1, 1.0, 10.0]},
    "random_forest": {"n_estimators": [20, 50], "max_depth": [None, 8]},
    "svc": {"C": [0.5, 1.0, 5.0]},
    "knn": {"n_neighbors": [3, 5, 9]},
}
"""Grids small enough for a few seconds on one core (3 folds)."""
MAX_CANDIDATES = 100
MODEL_ARTIFACT = "model.pkl"
PREDICTIONS_ARTIFACT = "predictions.json"


def train(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Fit on a stratified train split, score on the rest, store the fitted pipeline."""
    tasks.check_keys(args, ("dataset", "model", "params", "test_size", "seed"))
    dataset, model, params, seed = _common(args)
    test_size = tasks.float_arg(args, "test_size", default=0.25, low=0.05, high=0.9)
    from sklearn.model_selection import train_test_split

    ctx.progress(0.05, f"loading {dataset}")
    x, y = _load(dataset)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y)
    estimator = _estimator(model, params, seed=seed)
    ctx.progress(0.2, f"fitting {model}")
    started = time.perf_counter()
    _fit(estimator, x_train, y_train)
    fit_seconds = time.perf_counter() - started
    accuracy = float(estimator.score(x_test, y_test))
    ctx.progress(0.9, "saving model")
    artifact = ctx.save_artifact(MODEL_ARTIFACT, pickle.dumps(estimator, pickle.HIGHEST_PROTOCOL))
    return {"dataset": dataset, "model": model, "params": params, "accuracy": accuracy,
            "n_train": len(y_train), "n_test": len(y_test),
            "fit_seconds": round(fit_seconds, 4), "artifact": artifact}


def evaluate(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Stratified k-fold cross-validation accuracy."""
    tasks.check_keys(args, ("dataset", "model", "params", "folds", "seed"))
    dataset, model, params, seed = _common(args)
    folds = tasks.int_arg(args, "folds", default=5, low=2, high=20)  # every class has >= 48 samples
    x, y = _load(dataset)
    estimator = _estimator(model, params, seed=seed)

    def on_fold(done: int) -> None:
        ctx.progress(done / folds, f"fold {done}/{folds}")

    scores = _cross_validate(estimator, x, y, folds=folds, seed=seed, on_fold=on_fold)
    mean, std = _mean_std(scores)
    return {"dataset": dataset, "model": model, "params": params, "folds": folds,
            "mean_accuracy": mean, "std_accuracy": std, "scores": scores}


def sweep(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Grid search: cross-validate every candidate, report progress after each one."""
    tasks.check_keys(args, ("dataset", "model", "grid", "folds", "seed"))
    dataset = tasks.choice_arg(args, "dataset", default="digits", choices=DATASETS)
    model = tasks.choice_arg(args, "model", default="logreg", choices=MODELS)
    seed = tasks.int_arg(args, "seed", default=0, low=0, high=2**32 - 1)
    folds = tasks.int_arg(args, "folds", default=3, low=2, high=20)
    grid = _grid(tasks.dict_arg(args, "grid") or DEFAULT_GRIDS[model])
    from sklearn.model_selection import ParameterGrid

    candidates: list[dict[str, Any]] = list(ParameterGrid(grid))
    if len(candidates) > MAX_CANDIDATES:
        raise tasks.BadArgs(f"the grid has {len(candidates)} candidates; the limit is {MAX_CANDIDATES}")
    x, y = _load(dataset)
    results: list[dict[str, Any]] = []
    for number, candidate in enumerate(candidates, start=1):
        estimator = _estimator(model, candidate, seed=seed)
        mean, std = _mean_std(_cross_validate(estimator, x, y, folds=folds, seed=seed))
        results.append({"params": candidate, "mean_accuracy": mean, "std_accuracy": std})
        ctx.progress(number / len(candidates), f"candidate {number}/{len(candidates)}")
    best = max(results, key=lambda r: float(r["mean_accuracy"]))  # first of equals wins
    return {"dataset": dataset, "model": model, "folds": folds, "n_candidates": len(candidates),
            "best_params": best["params"], "best_score": best["mean_accuracy"], "results": results}


def predict(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """Batch-predict with the model an earlier sklearn.train job stored; store the predictions.

    The model is the one of ``model_job``'s accepted attempt (an attempt superseded while it kept
    running may have stored another, under its own attempt's key: it is never read)."""
    tasks.check_keys(args, ("model_job", "dataset", "limit"))
    model_job = args.get("model_job")
    if not isinstance(model_job, str) or not re.match(contract.JOB_ID_PATTERN, model_job):
        raise tasks.BadArgs(f"argument 'model_job' must be the id of a sklearn.train job, "
                            f"not {model_job!r}")
    dataset = tasks.choice_arg(args, "dataset", default="digits", choices=DATASETS)
    limit = None if args.get("limit") is None else tasks.int_arg(args, "limit", default=0, low=1)
    import numpy as np

    ctx.progress(0.05, f"loading {MODEL_ARTIFACT} of {model_job}'s accepted attempt")
    estimator = pickle.loads(ctx.load_artifact(MODEL_ARTIFACT, job_id=model_job))  # trusted store
    x, y = _load(dataset)
    x, y = x[:limit], y[:limit]
    expected = getattr(estimator, "n_features_in_", x.shape[1])
    if expected != x.shape[1]:
        raise tasks.BadArgs(f"the model of {model_job} takes {expected} features; "
                            f"{dataset} has {x.shape[1]}")
    ctx.progress(0.5, "predicting")
    predictions = estimator.predict(x)
    labels, counts = np.unique(predictions, return_counts=True)
    document = {"model_job": model_job, "dataset": dataset, "predictions": predictions.tolist()}
    artifact = ctx.save_artifact(PREDICTIONS_ARTIFACT, json.dumps(document).encode())
    return {"model_job": model_job, "dataset": dataset, "n_predictions": len(predictions),
            "accuracy": float(np.mean(predictions == y)),
            "class_counts": {str(label): int(n) for label, n in zip(labels.tolist(), counts, strict=True)},
            "artifact": artifact}


# --- helpers ----------------------------------------------------------------------------------


def _common(args: Mapping[str, Any]) -> tuple[str, str, dict[str, Any], int]:
    dataset = tasks.choice_arg(args, "dataset", default="digits", choices=DATASETS)
    model = tasks.choice_arg(args, "model", default="logreg", choices=MODELS)
    params = tasks.dict_arg(args, "params")
    seed = tasks.int_arg(args, "seed", default=0, low=0, high=2**32 - 1)
    return dataset, model, params, seed


def _load(dataset: str) -> tuple[Any, Any]:
    from sklearn import datasets

    loader: Callable[..., tuple[Any, Any]] = getattr(datasets, f"load_{dataset}")
    return loader(return_X_y=True)


def _estimator(model: str, params: Mapping[str, Any], *, seed: int) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if model == "logreg":
        from sklearn.linear_model import LogisticRegression
        step: Any = LogisticRegression(max_iter=5000, random_state=seed)
    elif model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier
        step = RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1)
    elif model == "svc":
        from sklearn.svm import SVC
        step = SVC(random_state=seed)
    else:
        from sklearn.neighbors import KNeighborsClassifier
        step = KNeighborsClassifier()
    pipeline = Pipeline([("scale", StandardScaler()), ("model", step)])
    try:
        pipeline.set_params(**{f"model__{name}": value for name, value in params.items()})
    except (TypeError, ValueError) as exc:
        raise tasks.BadArgs(f"invalid params for {model}: {exc}") from exc
    return pipeline


def _fit(estimator: Any, x: Any, y: Any) -> None:
    try:
        estimator.fit(x, y)
    except ValueError as exc:  # scikit-learn's InvalidParameterError has no public home
        if type(exc).__name__ == "InvalidParameterError":
            raise tasks.BadArgs(f"invalid params: {exc}") from exc
        raise


def _cross_validate(estimator: Any, x: Any, y: Any, *, folds: int, seed: int,
                    on_fold: Callable[[int], None] | None = None) -> list[float]:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    scores: list[float] = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for done, (train_rows, test_rows) in enumerate(splitter.split(x, y), start=1):
        fold_model = clone(estimator)
        _fit(fold_model, x[train_rows], y[train_rows])
        scores.append(float(fold_model.score(x[test_rows], y[test_rows])))
        if on_fold is not None:
            on_fold(done)
    return scores


def _mean_std(scores: Sequence[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.mean(scores)), float(np.std(scores))


def _grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    checked: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise tasks.BadArgs(f"grid entry {name!r} must be a non-empty list of values")
        checked[name] = list(values)
    return checked
