"""scikit-learn's 8x8 handwritten digits (shipped with the package, nothing downloaded):
the laptop-sized stand-in for the seed paper's MNIST classifiers.

BIMT has no digits notebook: it is trained with the MNIST notebook's choices (tasks.mnist), the
input sheet 8x8 instead of 28x28 and the hidden sheets kept at MNIST's 10x10, and 20,000 steps
instead of 40,000 (1,438 training images, ~1,400 epochs of minibatches of 100)."""
from __future__ import annotations

from dataclasses import replace

import torch
from sklearn.datasets import load_digits

from circuitry.tasks.base import Data, Task
from circuitry.tasks.mnist import MNIST_RECIPE

WIDTH = 100
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
    recipe=replace(MNIST_RECIPE, steps=20000),
)
