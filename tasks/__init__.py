"""The task registry. Adding a task: write a module with a `Task` value, import it here and add it
to TASKS (README, 'Adding a task')."""
from __future__ import annotations

from circuitry.tasks.base import Data, Task
from circuitry.tasks.digits import digits
from circuitry.tasks.incontext import incontext
from circuitry.tasks.induction import induction
from circuitry.tasks.mnist import mnist
from circuitry.tasks.modular_addition import modular_addition
from circuitry.tasks.planted_teacher import planted_teacher, teacher_edges
from circuitry.tasks.symbolic import compositionality, feature_sharing, independence
from circuitry.tasks.tracr import tracr_frac_prevs, tracr_reverse
from circuitry.tasks.two_moons import two_moons

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        independence,
        feature_sharing,
        compositionality,
        two_moons,
        modular_addition,
        digits,
        mnist,
        planted_teacher,
        induction,
        incontext,
        tracr_reverse,
        tracr_frac_prevs,
    ]
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}") from None


__all__ = ["Data", "Task", "TASKS", "get_task", "teacher_edges"]
