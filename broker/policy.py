"""Operator policy per queue (JOBQ_QUEUE_POLICY): which tasks a job may name, whether it may run
a ``command``, which images it may bring. Pure: the dispatcher asks ``QueuePolicy.refusal`` at
intake and again before it creates a pod.

Each queue's entry may set any of three rules; a rule it leaves out comes from the ``"*"`` entry,
and one that leaves it out too from the default below. The default opens nothing a publisher
chooses the code of: built-in tasks only (``contract.BUILTIN_TASKS``, code the operator
installed), no commands, no image of the job's own (a job that names none runs the operator's
JOBQ_IMAGE and is not checked).

Task patterns are ``fnmatch`` globs over the whole name, case-sensitive; a pattern with a ``:``
matches only ``module:function`` tasks and one without only built-in names, so ``"sklearn.*"``
allows ``sklearn.train`` but no function of the ``sklearn`` package (that would be
``"sklearn.*:*"``). Everything: ``["*", "*:*"]``. Image patterns are globs over the image string
(``*`` also matches ``/``, ``:`` and ``@``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Mapping

from broker import contract

ANY_QUEUE = "*"
ENV = "JOBQ_QUEUE_POLICY"
RULES = ("tasks", "commands", "images")


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """One entry of JOBQ_QUEUE_POLICY; None: not set here."""

    tasks: tuple[str, ...] | None = None
    """Globs of the task names allowed."""
    commands: bool | None = None
    """Whether ``command`` jobs are allowed."""
    images: tuple[str, ...] | None = None
    """Globs of the images a job may name."""


DEFAULT = Rules(tasks=tuple(sorted(contract.BUILTIN_TASKS)), commands=False, images=())
"""What applies where neither the queue's entry nor ``"*"`` sets a rule."""

OPEN = Rules(tasks=("*", "*:*"), commands=True, images=("*",))
"""Everything allowed (what jobq did before it had a policy)."""

OPEN_ENV = json.dumps({ANY_QUEUE: {"tasks": list(OPEN.tasks or ()), "commands": True, "images": ["*"]}})
"""JOBQ_QUEUE_POLICY that opens every queue (tests and benches that run commands)."""


@dataclasses.dataclass(frozen=True, slots=True)
class QueuePolicy:
    entries: Mapping[str, Rules] = dataclasses.field(default_factory=dict)
    """Rules by queue name, ``"*"`` for every queue."""

    def refusal(self, spec: contract.JobSpec) -> str | None:
        """Why the policy refuses ``spec`` (naming the queue, the rule and the value), or None."""
        queue = spec.queue
        if spec.command is not None:
            rules, source = self._rule(queue, "commands")
            if not rules.commands:
                return f"queue {queue}: command jobs are not allowed ({source}=false)"
        if spec.task is not None:
            rules, source = self._rule(queue, "tasks")
            patterns = rules.tasks or ()
            if not any(task_matches(spec.task, p) for p in patterns):
                return (
                    f"queue {queue}: task {_clip(spec.task)!r} matches no allowed pattern "
                    f"({source}={_listed(patterns)})"
                )
        if spec.image is not None:
            rules, source = self._rule(queue, "images")
            patterns = rules.images or ()
            if not any(fnmatch.fnmatchcase(spec.image, p) for p in patterns):
                return (
                    f"queue {queue}: image {_clip(spec.image)!r} matches no allowed pattern "
                    f"({source}={_listed(patterns)})"
                )
        return None

    def rules_for(self, queue: str) -> Rules:
        """The rules that apply to ``queue``, each one resolved (none is None)."""
        return Rules(
            tasks=self._rule(queue, "tasks")[0].tasks,
            commands=self._rule(queue, "commands")[0].commands,
            images=self._rule(queue, "images")[0].images,
        )

    def _rule(self, queue: str, rule: str) -> tuple[Rules, str]:
        """The entry that sets ``rule`` for ``queue`` (the queue's, else ``"*"``, else DEFAULT),
        and how a message names it."""
        for name in (queue, ANY_QUEUE):
            entry = self.entries.get(name)
            if entry is not None and getattr(entry, rule) is not None:
                return entry, f"{ENV} {name}.{rule}"
        return DEFAULT, f"{ENV} sets no {rule} for {queue} or *; default {rule}"


def task_matches(task: str, pattern: str) -> bool:
    """``pattern`` allows ``task``: a glob match, and both name a ``module:function`` or neither."""
    return (":" in task) == (":" in pattern) and fnmatch.fnmatchcase(task, pattern)


def parse(raw: str) -> QueuePolicy:
    """JOBQ_QUEUE_POLICY: a JSON object of queue name (or ``"*"``) to
    ``{"tasks": [glob, ...], "commands": bool, "images": [glob, ...]}``, each key optional.
    Empty: the default everywhere. Raises ValueError naming the entry at fault."""
    if not raw.strip():
        return QueuePolicy()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(
            'must be a JSON object of queue -> {"tasks": [...], "commands": bool, "images": [...]}'
        )
    entries: dict[str, Rules] = {}
    for queue, entry in value.items():
        if queue != ANY_QUEUE and not re.fullmatch(contract.QUEUE_PATTERN, queue):
            raise ValueError(f"{queue!r} is neither a queue name nor '*'")
        if not isinstance(entry, dict):
            raise ValueError(f"{queue}: must be an object with keys among {list(RULES)}")
        unknown = sorted(set(entry) - set(RULES))
        if unknown:
            raise ValueError(f"{queue}: unknown keys {unknown}; allowed: {list(RULES)}")
        commands = entry.get("commands")
        if commands is not None and not isinstance(commands, bool):
            raise ValueError(f"{queue}.commands: must be true or false, not {commands!r}")
        entries[queue] = Rules(
            tasks=_globs(entry, "tasks", queue), commands=commands, images=_globs(entry, "images", queue)
        )
    return QueuePolicy(entries)


def _globs(entry: Mapping[str, object], key: str, queue: str) -> tuple[str, ...] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise ValueError(f"{queue}.{key}: must be a list of non-empty glob patterns, not {value!r}")
    return tuple(p.strip() for p in value)


def _clip(text: str) -> str:
    return contract.clip(text, 200)


def _listed(patterns: tuple[str, ...]) -> str:
    return contract.clip(json.dumps(list(patterns)), 300)
