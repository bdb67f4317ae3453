"""Models and circuits for the primary family, in one plain process (no Ray), seed by seed:

    nice -n 15 python examples/primary_runs.py --tasks independence digits --steps 20000 \\
        --seeds 0 1 2 --out sweeps/full_length
    python examples/paper_verdicts.py sweeps/full_length --primary

Per seed, task and regime (at the task's reference lam): one model, then ACDC's sparsest circuit
with f >= 0.95 under each --ablation. Rows are appended to OUT/train.csv and OUT/discover.csv as
they finish (the columns orchestrator.primary reads, as a sweep's jobs.parquet has them), and a
rerun skips what is there, so the run can be cut at any seed and resumed. One process with one
torch thread, seeds in the outer loop: cut short, it leaves whole seeds, every regime of them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuitry.workers.discover import discover  # noqa: E402
from circuitry.workers.train import TrainConfig, train  # noqa: E402

TRAIN_COLUMNS = ("test_accuracy", "test_r2", "test_loss", "peak_tensor_bytes", "peak_memory_bytes", "train_seconds",
                 "swap_rounds", "neurons_swapped", "weights_above_1e-2")
FIXED_TAU = 1e-3
DISCOVER_COLUMNS = ("n_edges_kept", "n_edges_total", "faithfulness", "generalisation_gap", "edge_roc_auc",
                    "edge_precision", "edge_recall", "dependencies_match", "target_reached", "tau_found",
                    "discovery_seconds", "forward_examples", "edges_tested", "n_discovery", "n_evaluation")


def _append(path: Path, row: dict) -> None:
    frame = pd.DataFrame([row])
    frame.to_csv(path, mode="a", header=not path.is_file(), index=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["independence", "digits"])
    ap.add_argument("--regimes", nargs="+", default=["vanilla", "l1", "local", "bimt"])
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ablations", nargs="+", default=["resample"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    train_csv, discover_csv = args.out / "train.csv", args.out / "discover.csv"
    done = set(pd.read_csv(train_csv)["job_id"]) if train_csv.is_file() else set()
    found = set()
    if discover_csv.is_file():
        d = pd.read_csv(discover_csv)
        found = set(zip(d["model_id"], d["ablation"]))
    for seed in args.seeds:
        for task in args.tasks:
            for regime in args.regimes:
                job_id = f"{task}/{regime}/seed{seed}/steps{args.steps}"
                if job_id in done and all((job_id, a) in found for a in args.ablations):
                    continue
                cfg = TrainConfig(task, regime, args.steps, seed, device="cpu")
                t0 = time.perf_counter()
                result = train(cfg)
                resolved = cfg.resolved()
                if job_id not in done:
                    _append(train_csv, {"job_id": job_id, "task": task, "regime": regime, "seed": seed,
                                        "steps": args.steps, "lam": resolved.lam, "swap_every": resolved.swap_every,
                                        **{k: result.metrics.get(k) for k in TRAIN_COLUMNS}})
                for ablation in args.ablations:
                    if (job_id, ablation) in found:
                        continue
                    s = discover(result.checkpoint, "acdc", target_f=0.95, ablation=ablation, device="cpu").summary
                    ev = s["evaluation"]
                    # "found faster" as the seed meant it: one ACDC run at one fixed tau, its
                    # forward-equivalents and wall time beside the candidate edges it tested
                    fixed = discover(result.checkpoint, "acdc", FIXED_TAU, ablation=ablation, device="cpu").summary
                    _append(discover_csv, {"model_id": job_id, "method": "acdc", "target_f": 0.95, "ablation": ablation,
                                           "order": "ascending", **{k: s.get(k) for k in DISCOVER_COLUMNS},
                                           "eval_faithfulness": ev.get("faithfulness"),
                                           "eval_normalized_logit_gap": ev.get("normalized_logit_gap"),
                                           "fixed_tau": FIXED_TAU, "fixed_tau_forward_examples": fixed["forward_examples"],
                                           "fixed_tau_seconds": fixed["discovery_seconds"],
                                           "fixed_tau_edges_tested": fixed["edges_tested"],
                                           "fixed_tau_edges_kept": fixed["n_edges_kept"]})
                print(f"{job_id}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
