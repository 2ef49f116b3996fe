"""Task registry: ``task.name`` -> Task class.

Built-in tasks register themselves with :func:`register_task`; ``task.name`` may also be an import
path ``package.module:ClassName``, so a task defined outside turbo_ds needs no edit here either.
"""

from __future__ import annotations

import importlib

from turbo_ds.config import ConfigError

_TASKS: dict[str, type] = {}
BUILTIN_MODULES = (
    "turbo_ds.tasks.classification",
    "turbo_ds.tasks.video_text",
    "turbo_ds.tasks.long_video",
    "turbo_ds.tasks.long_video_two_stage",
)


def register_task(name: str):
    """Class decorator: make a Task subclass available as ``task.name: NAME``."""

    def deco(cls: type) -> type:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered ({_TASKS[name].__qualname__})")
        _TASKS[name] = cls
        cls.task_name = name
        return cls

    return deco


# A built-in module that cannot be imported here (video_text's numpy on a machine with torch alone)
# leaves the other tasks usable; asking for one of its tasks names the error.
_IMPORT_ERRORS: dict[str, ImportError] = {}


def _load_builtins() -> None:
    for mod in BUILTIN_MODULES:
        if mod in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(mod)
        except ImportError as e:
            _IMPORT_ERRORS[mod] = e


def get_task_class(name: str) -> type:
    """The Task class for ``task.name`` (a registered name or ``module:Class``)."""
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"config key 'task.name' = {name!r}: cannot import it ({e})") from e
    _load_builtins()
    if name not in _TASKS:
        missing = "".join(f"; {mod} cannot be imported here ({e})" for mod, e in _IMPORT_ERRORS.items())
        raise ConfigError(
            f"config key 'task.name' = {name!r}: unknown task; registered: {', '.join(sorted(_TASKS))} "
            f"(or give an import path 'package.module:ClassName'){missing}"
        )
    return _TASKS[name]


def list_tasks() -> list[str]:
    _load_builtins()
    return sorted(_TASKS)
