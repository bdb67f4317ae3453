"""The task registry. Adding a task: write a module with a `Task` value named like the task, and
add its name and module to _MODULES (README, 'Adding a task').

A task's module is imported on its first lookup, so listing the names (the CLI's choices, the
spec's schema, `circuitry --help`) imports neither torch nor scikit-learn."""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circuitry.tasks.base import Data, Task

# task name -> the module of circuitry.tasks that defines a `Task` value of that name
_MODULES = {
    "independence": "symbolic",
    "feature_sharing": "symbolic",
    "compositionality": "symbolic",
    "two_moons": "two_moons",
    "modular_addition": "modular_addition",
    "digits": "digits",
    "mnist": "mnist",
    "planted_teacher": "planted_teacher",
    "induction": "induction",
    "induction_shifted": "induction",
    "incontext": "incontext",
    "tracr_reverse": "tracr",
    "tracr_frac_prevs": "tracr",
}


class _Registry(MutableMapping):
    """name -> Task, in _MODULES' order; imports a task's module when the task is first looked up.
    A task set here (a test's variant, a task defined elsewhere) takes the name's place until it
    is deleted."""

    def __init__(self):
        self._set: dict[str, "Task"] = {}

    def __getitem__(self, name: str) -> "Task":
        if name in self._set:
            return self._set[name]
        module = importlib.import_module(f"circuitry.tasks.{_MODULES[name]}")
        return getattr(module, name)

    def __setitem__(self, name: str, task: "Task") -> None:
        self._set[name] = task

    def __delitem__(self, name: str) -> None:
        del self._set[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*_MODULES, *(n for n in self._set if n not in _MODULES)])

    def __len__(self) -> int:
        return len(set(_MODULES) | set(self._set))


TASKS: Mapping[str, "Task"] = _Registry()


def get_task(name: str) -> "Task":
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}") from None


_LAZY = {"Data": "base", "Task": "base", "teacher_edges": "planted_teacher"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'circuitry.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"circuitry.tasks.{_LAZY[name]}"), name)


__all__ = ["Data", "Task", "TASKS", "get_task", "teacher_edges"]
