"""Task names to functions: the built-ins of ``contract.BUILTIN_TASKS`` or ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from broker import contract
from workers import tasks


class TaskNotFound(LookupError):
    """The task name is neither a built-in nor an importable ``module:function``."""


def _import(name: str) -> tasks.Task:
    """The function ``name`` (``module:function``) names."""
    module_name, colon, function_name = name.partition(":")
    if not colon:
        raise TaskNotFound(f"unknown task {name!r}; built-in tasks are "
                           f"{', '.join(sorted(contract.BUILTIN_TASKS))}, or name one as 'module:function'")
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


BUILTINS: Mapping[str, tasks.Task] = MappingProxyType(
    {name: _import(builtin.function) for name, builtin in contract.BUILTIN_TASKS.items()})
"""The catalogue's functions (their modules import nothing heavy until a task runs)."""


def resolve(name: str) -> tasks.Task:
    """The function for ``name``; importing a ``module:function`` task may take a while."""
    if name in BUILTINS:
        return BUILTINS[name]
    return _import(name)
