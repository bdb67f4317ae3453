"""Issue 29's second-metric check: does "bimt's circuits are sparser than vanilla's" survive when
ACDC keeps the logit difference instead of the KL?

    nice -n 10 python examples/metric_robustness.py --task two_moons --steps 3000 --seeds 0 1 2 \\
        --out sweeps/metric_robustness

Per seed and regime (vanilla and bimt at the task's reference lam): one model (saved under
OUT/models, reused on a rerun), then ACDC's sparsest circuit with f >= 0.95 under each --metrics
entry (resample ablation). Rows go to OUT/discover.csv as they finish; a rerun skips what is there.
One torch thread, seeds in the outer loop.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuitry.workers.discover import find_circuit  # noqa: E402
from circuitry.workers.discover_config import DiscoverConfig  # noqa: E402
from circuitry.workers.train import TrainConfig, train  # noqa: E402

COLUMNS = ("n_edges_kept", "n_edges_total", "faithfulness", "target_reached", "tau_found", "metric_empty")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="two_moons")
    ap.add_argument("--regimes", nargs="+", default=["vanilla", "bimt"])
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--metrics", nargs="+", default=["kl", "logit_diff"])
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = args.out / "models"
    models.mkdir(parents=True, exist_ok=True)
    out_csv = args.out / "discover.csv"
    found = set()
    if out_csv.is_file():
        d = pd.read_csv(out_csv)
        found = set(zip(d["model_id"], d["metric"]))
    for seed in args.seeds:
        for regime in args.regimes:
            job_id = f"{args.task}/{regime}/seed{seed}/steps{args.steps}"
            path = models / f"{args.task}-{regime}-seed{seed}-steps{args.steps}.pt"
            if not path.is_file():
                t0 = time.perf_counter()
                torch.save(train(TrainConfig(args.task, regime, args.steps, seed, device="cpu")).checkpoint, path)
                print(f"trained {job_id}: {time.perf_counter() - t0:.0f} s", flush=True)
            if args.train_only:
                continue
            ckpt = torch.load(path, weights_only=False)
            for metric in args.metrics:
                if (job_id, metric) in found:
                    continue
                t0 = time.perf_counter()
                s = find_circuit(ckpt, DiscoverConfig("acdc", target_f=0.95, metric=metric, device="cpu")).summary
                row = {"model_id": job_id, "task": args.task, "regime": regime, "seed": seed, "metric": metric,
                       **{k: s.get(k) for k in COLUMNS},
                       "eval_faithfulness": s["evaluation"].get("faithfulness"),
                       "full_accuracy": s["evaluation"].get("full_accuracy")}
                pd.DataFrame([row]).to_csv(out_csv, mode="a", header=not out_csv.is_file(), index=False)
                print(f"{job_id} {metric}: {row['n_edges_kept']} edges, {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
