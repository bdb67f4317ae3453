"""Train tasks at their BIMT reference settings (tasks.recipe, docs/bimt_reference.md) and print what
a reviewer checks first: does every regime still learn the task, and how sparse is the result.
One line per run, printed as it finishes (minutes per run for modular_addition: float64, 20,000 steps).

    .venv/bin/python examples/bimt_reference_check.py --tasks modular_addition --regimes bimt vanilla
    .venv/bin/python examples/bimt_reference_check.py --tasks digits two_moons --seeds 0 1 --steps 2000
"""
from __future__ import annotations

import argparse

import torch

from circuitry.tasks import TASKS, get_task
from circuitry.workers.names import TRAINED_REGIMES
from circuitry.workers.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--regimes", nargs="+", default=list(TRAINED_REGIMES), choices=list(TRAINED_REGIMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=None, help="default: each task's recipe")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'task':<17} {'regime':<8} {'seed':>4} {'steps':>6} {'train acc':>9} {'test acc':>8} "
          f"{'test loss':>9} {'cost':>9} {'|w|>1e-2':>8} {'swapped':>7} {'steps/s':>7}", flush=True)
    for task in args.tasks:
        steps = args.steps or get_task(task).recipe.steps
        for regime in args.regimes:
            for seed in args.seeds:
                m = train(TrainConfig(task, regime, steps, seed=seed, log_every=10**9)).metrics
                acc = lambda k: f"{m[k]:.3f}" if k in m else "-"  # noqa: E731
                print(f"{task:<17} {regime:<8} {seed:>4} {steps:>6} {acc('train_accuracy'):>9} {acc('test_accuracy'):>8} "
                      f"{m['test_loss']:9.3g} {m['connection_cost']:9.3g} {m['weights_above_1e-2']:8d} "
                      f"{m['neurons_swapped']:7d} {m['steps_per_second']:7.0f}", flush=True)


if __name__ == "__main__":
    main()
