"""How many jobs a spec's checked grids expand to, without building them.

orchestrator.spec builds one Job per grid point (settings, a content hash, a label): ~2 KB and
~70 us each, so a 1,000,000-job grid took a minute and gigabytes before anything could refuse it.
This counts the same jobs from the grids alone, so `sweep.max_jobs` is checked first.

A train job is its resolved settings (the task's recipe filled in, tasks.recipe), and several
[[train]] grids name a job once; so the train jobs are the union of product sets, counted by
inclusion-exclusion (the intersection of two product sets is the product of their per-field
intersections), per task, since the recipe's defaults are the task's. Discover jobs are, for each
train job, the union of the [[discover]] grids that apply to its seed (`train_seed`), counted the
same way; train jobs are grouped by seed so no train job is visited. Inclusion-exclusion costs
2^grids: beyond MAX_EXACT grids the count is the plain sum, an upper bound (said so by `exact`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from circuitry.tasks import TASKS
from circuitry.workers.names import RECIPE_DEFAULTS

MAX_EXACT = 12  # grids of one union counted exactly (2^12 intersections)


@dataclass(frozen=True)
class JobCount:
    train: int
    discover: int
    exact: bool = True  # False: an upper bound (more than MAX_EXACT grids of one kind)

    @property
    def total(self) -> int:
        return self.train + self.discover


def _union(grids: list[dict[str, frozenset]]) -> tuple[int, bool]:
    """|union of the product sets| (each a field -> set of values), and whether it is exact."""
    if not grids:
        return 0, True
    if len(grids) > MAX_EXACT:
        return sum(math.prod(len(v) for v in g.values()) for g in grids), False
    total = 0
    for r in range(1, len(grids) + 1):
        for combo in itertools.combinations(grids, r):
            size = math.prod(len(frozenset.intersection(*(g[k] for g in combo))) for k in combo[0])
            total += size if r % 2 else -size
    return total, True


def _train_sets(train: list[dict[str, list]]) -> list[dict[str, frozenset]]:
    """Each train grid split by task, the recipe's defaults resolved (as spec._resolve_train does)."""
    out = []
    for grid in train:
        for task in grid["task"]:
            recipe = TASKS[task].recipe
            sets = {}
            for key, values in grid.items():
                if key == "task":
                    values = [task]
                elif key in RECIPE_DEFAULTS:
                    values = [getattr(recipe, key) if v is None else v for v in values]
                sets[key] = frozenset(values)
            out.append(sets)
    return out


def count_jobs(train: list[dict[str, list]], discover: list[dict[str, list]] | None) -> JobCount:
    """The jobs orchestrator.spec.expand would build from these checked grids."""
    tsets = _train_sets(train)
    n_train, exact = _union(tsets)
    n_discover = 0
    dsets = []
    for grid in discover or []:
        seeds = frozenset(grid.get("train_seed", [None])) - {None}
        dsets.append((seeds, {k: frozenset(v) for k, v in grid.items() if k != "train_seed"}))
    if dsets:
        all_seeds = frozenset().union(*(g["seed"] for g in tsets))
        by_applicable: dict[tuple, int] = {}  # which discover grids apply -> train jobs they apply to
        for seed in all_seeds:
            applicable = tuple(i for i, (only, _) in enumerate(dsets) if not only or seed in only)
            n, ok = _union([{**g, "seed": g["seed"] & {seed}} for g in tsets])
            exact &= ok
            by_applicable[applicable] = by_applicable.get(applicable, 0) + n
        for applicable, n_models in by_applicable.items():
            per_model, ok = _union([dsets[i][1] for i in applicable])
            exact &= ok
            n_discover += n_models * per_model
    return JobCount(n_train, n_discover, exact)
