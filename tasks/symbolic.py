"""The BIMT paper's symbolic formulas (section 3.1): inputs U(-1, 1), 100 train / 100 test, trained as
symbolic_formulas_3.1.ipynb does (tasks.recipe's defaults; compositionality deeper, its own lam schedule)."""
from __future__ import annotations

import math

import torch

from circuitry.tasks.base import FRESH_SEED_OFFSET, Data, Task
from circuitry.tasks.recipe import SYMBOLIC, Recipe

N_TRAIN = N_TEST = 100


def _formula_task(name, n_in, formula, dependencies, description, hidden=(20, 20), recipe=SYMBOLIC) -> Task:
    def generate(seed: int) -> Data:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(N_TRAIN + N_TEST, n_in, generator=g) * 2 - 1
        y = formula(x)
        return Data(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])

    def fresh(seed: int, n: int):
        x = torch.rand(n, n_in, generator=torch.Generator().manual_seed(seed + FRESH_SEED_OFFSET)) * 2 - 1
        return x, formula(x)

    n_out = len(dependencies)
    return Task(
        name=name,
        kind="regression",
        shape=(n_in, *hidden, n_out),
        generate=generate,
        description=description,
        dependencies=tuple(frozenset(d) for d in dependencies),
        recipe=recipe,
        fresh=fresh,
    )


def _independence(x):
    x1, x2, x3, x4 = x.unbind(1)
    return torch.stack([(x1 + x3) ** 3, x2**2 + torch.sin(math.pi * x4)], 1)


def _feature_sharing(x):
    x1, x2, x3 = x.unbind(1)
    return torch.stack([x1**2, x1**2 + x2**2, x1**2 + x2**2 + x3**2], 1)


def _compositionality(x):
    x1, x2, x3, x4 = x.unbind(1)
    return torch.sqrt((x1 - x2) ** 2 + (x3 - x4) ** 2).unsqueeze(1)


independence = _formula_task(
    "independence", 4, _independence, [{0, 2}, {1, 3}], "[(x1+x3)^3, x2^2+sin(pi x4)]"
)
feature_sharing = _formula_task(
    "feature_sharing", 3, _feature_sharing, [{0}, {0, 1}, {0, 1, 2}],
    "[x1^2, x1^2+x2^2, x1^2+x2^2+x3^2]",
)
# The notebook's compositionality cell (symbolic_formulas_3.1.ipynb, cell 11) is deeper, 4-20-20-20-20-1,
# and its lam goes x3 at steps/4 and stays there (`lamb *= 3`, then `lamb *= 1`).
compositionality = _formula_task(
    "compositionality", 4, _compositionality, [{0, 1, 2, 3}], "sqrt((x1-x2)^2+(x3-x4)^2)",
    hidden=(20, 20, 20, 20), recipe=Recipe(lam_phases=((0.0, 1.0), (0.25, 3.0), (0.75, 3.0))),
)
