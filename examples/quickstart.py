"""Train one BIMT and one vanilla network on `independence` and compare them: the quickest look at
what BIMT does to a network. Writes runs/quickstart/{bimt,vanilla}/ (model.pt, metrics.json,
network.png).

    .venv/bin/python examples/quickstart.py [--steps 5000]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from circuitry.workers.modularity import pruned_components
from circuitry.workers.outputs import write_training
from circuitry.workers.train import TrainConfig, train


def describe(components) -> str:
    return "  ".join("{" + ",".join(f"x{i + 1}" for i in sorted(ins)) + "}->{" + ",".join(f"y{o + 1}" for o in sorted(outs)) + "}"
                     for ins, outs in components)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--out", default="runs/quickstart")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'regime':<8} {'test MSE':>9} {'conn. cost':>10} {'|w|>1% max':>10} {'ms/step':>8}  modules at |w| > 10% of max")
    for regime in ("vanilla", "bimt"):
        result = train(TrainConfig("independence", regime, args.steps, seed=0))
        write_training(result, Path(args.out) / regime)
        m = result.metrics
        print(f"{regime:<8} {m['test_loss']:9.4f} {m['connection_cost']:10.2f} {m['weights_above_1e-2']:10d} "
              f"{1000 / m['steps_per_second']:8.3f}  {describe(pruned_components(result.checkpoint, 0.1))}")
    print(f"drawings: {args.out}/vanilla/network.png, {args.out}/bimt/network.png")


if __name__ == "__main__":
    main()
