"""Two interleaving half-circles (scikit-learn's make_moons), a 2-class classifier."""
from __future__ import annotations

import torch
from sklearn.datasets import make_moons

from tasks.base import Data, Task

N_TRAIN = N_TEST = 500


def generate(seed: int) -> Data:
    x, y = make_moons(N_TRAIN + N_TEST, noise=0.1, random_state=seed)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return Data(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


two_moons = Task(
    name="two_moons",
    kind="classification",
    shape=(2, 20, 20, 2),
    generate=generate,
    description="make_moons(noise=0.1), 500 train / 500 test",
    defaults={"lam": 1e-3, "steps": 20000, "swap_every": 200},
)
