"""Vectorized swaps vs a straightforward port of the BIMT reference (full connection-cost recompute
for every candidate position), on trained-shaped independence (4-20-20-2) and digits
(64-200-200-10) networks. Both choose positions for the same neurons in the same state; the table
shows that the chosen positions are identical and the time ratio (goal >= 50x).

    .venv/bin/python benchmarks/swap.py
"""
from __future__ import annotations

import copy
import time

import torch

from circuitry.workers.model import CoordMLP
from circuitry.workers.swap import best_position_reference, swap_cost_deltas, top_neurons


def timed_choices(model: CoordMLP, choose, top_k: int) -> tuple[list[int], float]:
    """Positions chosen for the top-k neurons of every layer (no swaps applied, same state)."""
    neurons = [(layer, j) for layer in range(len(model.shape)) for j in top_neurons(model, layer, top_k)]
    start = time.perf_counter()
    choices = [choose(model, layer, j) for layer, j in neurons]
    return choices, time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"{'network':<16} {'neurons tried':>13} {'reference s':>11} {'vectorized s':>12} {'ratio':>7} {'same':>5}")
    for name, shape in [("independence", [4, 20, 20, 2]), ("digits W=200", [64, 200, 200, 10])]:
        model = CoordMLP(shape)
        with torch.no_grad():  # heavy-tailed weights, like a net under an L1 penalty
            for lin in model.linears:
                lin.weight.mul_(torch.rand_like(lin.weight) ** 4 * 5)
        fast = lambda m, l, j: int(torch.argmin(swap_cost_deltas(m, l, j)))  # noqa: E731
        reps = 20 if shape[1] < 100 else 3
        fast_choices, t_fast = timed_choices(model, fast, 5)
        for _ in range(reps - 1):
            t_fast = min(t_fast, timed_choices(model, fast, 5)[1])
        ref_choices, t_ref = timed_choices(copy.deepcopy(model), best_position_reference, 5)
        print(f"{name:<16} {len(ref_choices):>13} {t_ref:11.3f} {t_fast:12.4f} {t_ref / t_fast:7.0f} "
              f"{str(ref_choices == fast_choices):>5}")


if __name__ == "__main__":
    main()
