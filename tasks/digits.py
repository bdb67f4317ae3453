"""scikit-learn's 8x8 handwritten digits (shipped with the package, nothing downloaded):
the laptop-sized stand-in for the seed paper's MNIST classifiers."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from tasks.base import Data, Task

WIDTH = 200
TEST_FRACTION = 0.2


def generate(seed: int) -> Data:
    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(TEST_FRACTION * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return Data(x[tr], y[tr], x[te], y[te])


digits = Task(
    name="digits",
    kind="classification",
    shape=(64, WIDTH, WIDTH, 10),
    generate=generate,
    description="sklearn 8x8 digits, 1438 train / 359 test",
    input_grid=(8, 8),
    defaults={"lam": 1e-3, "steps": 20000, "swap_every": 200},  # 1e-2 collapses it (BIMT used 1e-2 on MNIST)
)
