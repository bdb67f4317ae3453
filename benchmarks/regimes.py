"""What each training regime costs: step time, share of time in swaps, the allocator's bytes of a
step, inference speed, on independence (4-20-20-2), digits (64-100-100-10) and two transformers:
induction (2 layers, 2 heads, d_model 32, attention-only) and incontext (BIMT's: 2 layers, 1 head,
d_model 32, MLP 128). All regimes run in
this one process, interleaved: each of --rounds rounds trains every regime once, in an order
rotated by one each round, so a burst of load elsewhere falls on every regime alike. A regime's
figure is the median over rounds of its ratio to vanilla's run of the same round; compare those
ratios, not the absolutes. This, not a sweep's wall times (measured beside whatever else ran),
is where docs/results.md reads training time and inference speed from. Swaps run at the
reference's interval (every 200 steps; digits 500), the rate of a full-length run.

    .venv/bin/python benchmarks/regimes.py [--steps-independence 3000] [--steps-digits 600]
        [--steps-induction 400] [--steps-incontext 1000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics

import torch

from circuitry.tasks import get_task
from circuitry.workers.device import pick_device
from circuitry.workers.names import TRAINED_REGIMES
from circuitry.workers.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps-independence", type=int, default=3000)
    p.add_argument("--steps-digits", type=int, default=600)
    p.add_argument("--steps-induction", type=int, default=400)
    p.add_argument("--steps-incontext", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    print(f"device: {device} ({platform.processor() or platform.machine()}), torch threads: {args.threads}, "
          f"rounds: {args.rounds} (interleaved; medians over rounds of the ratio to vanilla's same-round run)")
    header = (f"{'task':<13} {'regime':<8} {'ms/step':>8} {'x vanilla':>9} {'swap %':>7} {'tensor KiB':>10} "
              f"{'inf b1 x':>9} {'inf b1024 x':>11}")
    print(header)
    print("-" * len(header))
    regimes = list(TRAINED_REGIMES)
    for task, steps in [("independence", args.steps_independence), ("digits", args.steps_digits),
                        ("induction", args.steps_induction), ("incontext", args.steps_incontext)]:
        # the reference's swaps per step (its interval at its full length): a shortened run keeps
        # the reference's number of swap rounds, so it swaps more often per step than the real cost
        every = get_task(task).recipe.swap_every
        for regime in regimes:  # warm-up (allocator, kernels)
            train(TrainConfig(task, regime, min(steps, 50), seed=0, swap_every=every))
        runs: dict[str, list[dict]] = {r: [] for r in regimes}
        for k in range(args.rounds):
            for regime in regimes[k % len(regimes):] + regimes[:k % len(regimes)]:
                runs[regime].append(train(TrainConfig(task, regime, steps, seed=0, swap_every=every)).metrics)

        def ratio(regime: str, key: str) -> float:
            return statistics.median(m[key] / v[key] for m, v in zip(runs[regime], runs["vanilla"]))

        for regime in regimes:
            ms = statistics.median(1000 / m["steps_per_second"] for m in runs[regime])
            swap = statistics.median(100 * m["swap_share"] for m in runs[regime])
            print(f"{task:<13} {regime:<8} {ms:8.3f} {1 / ratio(regime, 'steps_per_second'):9.2f} {swap:7.1f} "
                  f"{runs[regime][0].get('peak_tensor_bytes', float('nan')) / 1024:10.1f} "
                  f"{ratio(regime, 'inference_per_second_batch1'):9.2f} {ratio(regime, 'inference_per_second_batch1024'):11.2f}")


if __name__ == "__main__":
    main()
