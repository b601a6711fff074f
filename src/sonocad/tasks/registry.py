"""The one registry of tasks: every module that needs to know what a task does asks it here."""

from __future__ import annotations

from sonocad.errors import SonocadError
from sonocad.tasks.base import Task

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make `task` known by its name (recipes, checkpoints); a name is registered once."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called `name`; a one-line error naming the known ones otherwise."""
    if name not in _TASKS:
        raise SonocadError(f"unknown task {name!r}; tasks: {', '.join(task_names())}")
    return _TASKS[name]


def task_names() -> list[str]:
    return list(_TASKS)
