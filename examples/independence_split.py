"""BIMT's headline result at full length: 20,000 steps on `independence` split the network into
{x1,x3}->y1 and {x2,x4}->y2 once weights below a fraction of max|W| are pruned; vanilla training
does not. Prints the components at several pruning fractions for a few seeds (about a minute).

    .venv/bin/python examples/independence_split.py [--steps 20000] [--seeds 3]
"""
from __future__ import annotations

import argparse

import torch

from circuitry.workers.modularity import pruned_components
from circuitry.workers.train import TrainConfig, train

FRACTIONS = (1e-2, 3e-2, 5e-2, 1e-1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'regime':<8} {'seed':>4} {'test MSE':>9}  " + "  ".join(f"{f:>6.0e}: modules" for f in FRACTIONS))
    for regime in ("bimt", "vanilla"):
        for seed in range(args.seeds):
            result = train(TrainConfig("independence", regime, args.steps, seed=seed))
            cells = []
            for f in FRACTIONS:
                comps = pruned_components(result.checkpoint, f)
                cells.append(" | ".join(f"{sorted(i + 1 for i in ins)}->{sorted(o + 1 for o in outs)}" for ins, outs in comps))
            print(f"{regime:<8} {seed:>4} {result.metrics['test_loss']:9.4f}  " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
