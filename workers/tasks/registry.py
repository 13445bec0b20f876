"""Task names to functions: the built-ins of ``contract.BUILTIN_TASKS`` or ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from workers import tasks
from workers.tasks import demo_tasks, sklearn_tasks

BUILTINS: Mapping[str, tasks.Task] = MappingProxyType({
    "sklearn.train": sklearn_tasks.train,
    "sklearn.evaluate": sklearn_tasks.evaluate,
    "sklearn.sweep": sklearn_tasks.sweep,
    "sklearn.predict": sklearn_tasks.predict,
    "demo.sleep": demo_tasks.sleep,
    "demo.flaky": demo_tasks.flaky,
    "demo.exit": demo_tasks.exit_with,
    "demo.hog": demo_tasks.hog,
    "demo.echo_size": demo_tasks.echo_size,
    "demo.witness": demo_tasks.witness,
})


class TaskNotFound(LookupError):
    """The task name is neither a built-in nor an importable ``module:function``."""


def resolve(name: str) -> tasks.Task:
    """The function for ``name``; importing a ``module:function`` task may take a while."""
    if name in BUILTINS:
        return BUILTINS[name]
    module_name, colon, function_name = name.partition(":")
    if not colon:
        raise TaskNotFound(f"unknown task {name!r}; built-in tasks are "
                           f"{', '.join(sorted(BUILTINS))}, or name one as 'module:function'")
    if not module_name or not function_name:
        raise TaskNotFound(f"task {name!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError, TypeError, ValueError) as exc:  # TypeError: relative name
        raise TaskNotFound(f"cannot import module {module_name!r} of task {name!r}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TaskNotFound(f"module {module_name!r} has no function {function_name!r}")
    task: tasks.Task = function
    return task
