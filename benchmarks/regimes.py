"""What each training regime costs: step time, share of time in swaps, peak memory, inference
speed, on independence (4-20-20-2), digits (64-200-200-10) and two transformers: induction (2 layers,
2 heads, d_model 32, attention-only) and incontext (BIMT's: 2 layers, 1 head, d_model 32, MLP 128).
All regimes run in this one process, one after another; compare the ratios (BIMT / vanilla step
time, goal <= 1.3), not the absolutes.

    .venv/bin/python benchmarks/regimes.py [--steps-independence 3000] [--steps-digits 600]
        [--steps-induction 400] [--steps-incontext 1000]
"""
from __future__ import annotations

import argparse
import platform

import torch

from circuitry.workers.device import pick_device
from circuitry.workers.names import TRAINED_REGIMES
from circuitry.workers.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps-independence", type=int, default=3000)
    p.add_argument("--steps-digits", type=int, default=600)
    p.add_argument("--steps-induction", type=int, default=400)
    p.add_argument("--steps-incontext", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    print(f"device: {device} ({platform.processor() or platform.machine()}), torch threads: {args.threads}")
    header = f"{'task':<13} {'regime':<8} {'ms/step':>8} {'x vanilla':>9} {'swap %':>7} {'peak MiB':>9} {'+MiB':>6} {'inf/s b1':>9} {'inf/s b1024':>12} {'test loss':>9}"
    print(header)
    print("-" * len(header))
    for task, steps in [("independence", args.steps_independence), ("digits", args.steps_digits),
                        ("induction", args.steps_induction), ("incontext", args.steps_incontext)]:
        base = None
        for regime in TRAINED_REGIMES:
            train(TrainConfig(task, regime, min(steps, 50), seed=0))  # warm-up (allocator, kernels)
            m = train(TrainConfig(task, regime, steps, seed=0)).metrics
            ms = 1000 / m["steps_per_second"]
            base = base or ms
            print(f"{task:<13} {regime:<8} {ms:8.3f} {ms / base:9.2f} {100 * m['swap_share']:7.1f} "
                  f"{m['peak_memory_bytes'] / 2**20:9.0f} {m['peak_memory_delta_bytes'] / 2**20:6.1f} "
                  f"{m['inference_per_second_batch1']:9.0f} {m['inference_per_second_batch1024']:12.0f} "
                  f"{m['test_loss']:9.3g}")


if __name__ == "__main__":
    main()
