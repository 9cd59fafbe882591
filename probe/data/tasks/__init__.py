"""Labelled synthetic tasks with deterministic seeds and minimal pairs (one file per task).

``TASKS`` maps task names to classes; ``get_task(name)`` builds one with default options.
"""
from __future__ import annotations

from probe.data.tasks.agreement import Agreement
from probe.data.tasks.base import Task, TaskExample
from probe.data.tasks.brackets import Brackets
from probe.data.tasks.induction import Induction
from probe.data.tasks.recall import AssociativeRecall
from probe.errors import InputError, suggest

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Agreement, AssociativeRecall, Induction, Brackets)}


def get_task(name: str | Task, **options) -> Task:
    """A task instance by name (``agreement``, ``recall``, ``induction``, ``brackets``)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise InputError(f"Unknown task {name!r}.{suggest(str(name), TASKS)} Tasks: {', '.join(TASKS)}.")
    return TASKS[name](**options)


__all__ = ["TASKS", "Agreement", "AssociativeRecall", "Brackets", "Induction", "Task", "TaskExample", "get_task"]
