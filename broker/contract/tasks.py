"""The task catalogue: every built-in task, the function that implements it, and what it does.

The one list of built-in tasks. The contract validates a JobSpec's ``task`` against it; the
worker's registry (``workers.tasks.registry``) imports each entry's ``function`` from it. A job
that names neither ``profile`` nor ``resources`` gets its task's ``profile`` (``JobSpec.profile_name``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType


@dataclasses.dataclass(frozen=True, slots=True)
class BuiltinTask:
    function: str
    """The implementation, as ``package.module:function`` (imported by the worker only)."""
    description: str
    profile: str = "small"
    """The resource profile (``resources.PROFILES``) of a job that names neither ``profile`` nor
    ``resources``."""


_SKLEARN = "workers.tasks.sklearn_tasks"
_INCREMENTAL = "workers.tasks.incremental_tasks"
_TF = "workers.tasks.tf_tasks"
_DEMO = "workers.tasks.demo_tasks"

BUILTIN_TASKS: Mapping[str, BuiltinTask] = MappingProxyType({
    "sklearn.train": BuiltinTask(f"{_SKLEARN}:train",
                                 "train a classifier on a bundled data set and store the model"),
    "sklearn.evaluate": BuiltinTask(f"{_SKLEARN}:evaluate",
                                    "cross-validate a classifier on a bundled data set"),
    "sklearn.sweep": BuiltinTask(f"{_SKLEARN}:sweep", "grid-search hyper-parameters of a classifier"),
    "sklearn.predict": BuiltinTask(f"{_SKLEARN}:predict",
                                   "batch-predict with a model stored by an earlier sklearn.train job"),
    "sklearn.train_incremental": BuiltinTask(
        f"{_INCREMENTAL}:train_incremental",
        "train a classifier epoch by epoch (partial_fit), checkpointing every epoch; resumes from the "
        "newest checkpoint"),
    # TensorFlow's import alone takes ~700 MB resident: more than `small` (512Mi) allows a pod.
    "tf.train": BuiltinTask(f"{_TF}:train",
                            "train a small Keras network epoch by epoch, checkpointing every epoch (needs "
                            "the tf extra on the node)", profile="medium"),
    "demo.sleep": BuiltinTask(f"{_DEMO}:sleep", "sleep for args.seconds (tests and chaos experiments)"),
    "demo.flaky": BuiltinTask(f"{_DEMO}:flaky", "fail until attempt args.succeed_on, then succeed (tests)"),
    "demo.exit": BuiltinTask(f"{_DEMO}:exit_with", "exit with args.code (tests)"),
    "demo.hog": BuiltinTask(f"{_DEMO}:hog", "allocate args.mb megabytes (tests the memory limit)"),
    "demo.echo_size": BuiltinTask(f"{_DEMO}:echo_size",
                                  "report the size and SHA-256 of args.data (tests big arguments)"),
    "demo.witness": BuiltinTask(f"{_DEMO}:witness",
                                "sleep, save a random token as artifact witness.txt and return it, logging "
                                "start and end to the JSONL file args.ledger (the exactly-once checker's "
                                "evidence)"),
})
"""Task names the workers implement; ``package.module:function`` names any importable task."""
