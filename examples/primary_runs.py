"""Models and circuits for the primary family, in one plain process (no Ray), seed by seed:

    nice -n 15 python examples/primary_runs.py --tasks independence digits --steps 20000 \\
        --seeds 0 1 2 --out sweeps/full_length
    python examples/paper_verdicts.py sweeps/full_length --primary

Per seed, task and regime (at the task's reference lam): one model (saved under OUT/models, reused
on a rerun), then ACDC's sparsest circuit with f >= 0.95 under each --ablation and each --metrics
entry (default: the task's own metric, kl or mse). Rows are appended to OUT/train.csv and
OUT/discover.csv as they finish (the columns orchestrator.primary reads, as a sweep's jobs.parquet
has them, and `metric`, empty for the task's own), and a rerun skips what is there, so the run can
be cut at any seed and resumed. One process with one torch thread, seeds in the outer loop: cut
short, it leaves whole seeds, every regime of them.

A second circuit metric on the same models (docs/results.md, "Robustness: a second metric"):

    nice -n 10 python examples/primary_runs.py --tasks two_moons --regimes vanilla bimt --steps 3000 \\
        --metrics kl logit_diff --out sweeps/metric_robustness
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

TRAIN_COLUMNS = ("test_accuracy", "test_r2", "test_loss", "peak_tensor_bytes", "peak_memory_bytes", "train_seconds",
                 "swap_rounds", "neurons_swapped", "weights_above_1e-2")
FIXED_TAU = 1e-3
DISCOVER_COLUMNS = ("n_edges_kept", "n_edges_total", "faithfulness", "generalisation_gap", "edge_roc_auc",
                    "edge_precision", "edge_recall", "dependencies_match", "target_reached", "tau_found",
                    "discovery_seconds", "forward_examples", "edges_tested", "n_discovery", "n_evaluation", "metric_empty")


def _append(path: Path, row: dict) -> None:
    frame = pd.DataFrame([row])
    if not path.is_file():
        frame.to_csv(path, index=False)
        return
    header = pd.read_csv(path, nrows=0).columns
    if set(frame.columns) <= set(header):
        frame.reindex(columns=header).to_csv(path, mode="a", header=False, index=False)
    else:  # a CSV from before a column was added (`metric`): rewrite it with every column
        tmp = path.with_suffix(".tmp")
        pd.concat([pd.read_csv(path), frame], ignore_index=True).to_csv(tmp, index=False)
        tmp.replace(path)


def _metric_label(metric) -> str | None:
    """A discover.csv `metric` cell as --metrics names it: empty (NaN, or no column in a CSV from
    before --metrics) is the task's own metric, None."""
    return metric if isinstance(metric, str) else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["independence", "digits"])
    ap.add_argument("--regimes", nargs="+", default=["vanilla", "l1", "local", "bimt"])
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ablations", nargs="+", default=["resample"])
    ap.add_argument("--metrics", nargs="+", default=[None],
                    help="circuit metrics ACDC keeps (workers.graph.Metric), each its own rows; default: the task's")
    ap.add_argument("--train-only", action="store_true", help="train and save the models, discover nothing")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    train_csv, discover_csv = args.out / "train.csv", args.out / "discover.csv"
    done = set(pd.read_csv(train_csv)["job_id"]) if train_csv.is_file() else set()
    found = set()
    if discover_csv.is_file():
        d = pd.read_csv(discover_csv)
        metrics = d["metric"] if "metric" in d else [None] * len(d)
        found = set(zip(d["model_id"], d["ablation"], map(_metric_label, metrics)))
    wanted = [(a, m) for a in args.ablations for m in args.metrics]
    for seed in args.seeds:
        for task in args.tasks:
            for regime in args.regimes:
                job_id = f"{task}/{regime}/seed{seed}/steps{args.steps}"
                if job_id in done and (args.train_only or all((job_id, a, m) in found for a, m in wanted)):
                    continue
                t0 = time.perf_counter()
                path = args.out / "models" / f"{task}-{regime}-seed{seed}-steps{args.steps}.pt"
                if job_id in done and path.is_file():
                    ckpt = torch.load(path, weights_only=False)
                else:
                    result = train(TrainConfig(task, regime, args.steps, seed, device="cpu"))
                    ckpt, resolved = result.checkpoint, TrainConfig(task, regime, args.steps, seed).resolved()
                    if job_id not in done:
                        _append(train_csv, {"job_id": job_id, "task": task, "regime": regime, "seed": seed,
                                            "steps": args.steps, "lam": resolved.lam, "swap_every": resolved.swap_every,
                                            **{k: result.metrics.get(k) for k in TRAIN_COLUMNS}})
                    path.parent.mkdir(exist_ok=True)
                    torch.save(ckpt, path)
                if args.train_only:
                    continue
                for ablation, metric in wanted:
                    if (job_id, ablation, metric) in found:
                        continue
                    acdc = lambda **kw: find_circuit(ckpt, DiscoverConfig(  # noqa: E731
                        "acdc", ablation=ablation, metric=metric, device="cpu", **kw)).summary
                    s = acdc(target_f=0.95)
                    ev = s["evaluation"]
                    # "found faster" as the seed meant it: one ACDC run at one fixed tau, its
                    # forward-equivalents and wall time beside the candidate edges it tested
                    fixed = acdc(threshold=FIXED_TAU)
                    _append(discover_csv, {"model_id": job_id, "method": "acdc", "target_f": 0.95, "ablation": ablation,
                                           "metric": metric, "order": "ascending",
                                           **{k: s.get(k) for k in DISCOVER_COLUMNS},
                                           "eval_faithfulness": ev.get("faithfulness"),
                                           "eval_normalized_logit_gap": ev.get("normalized_logit_gap"),
                                           "eval_full_accuracy": ev.get("full_accuracy"),
                                           "fixed_tau": FIXED_TAU, "fixed_tau_forward_examples": fixed["forward_examples"],
                                           "fixed_tau_seconds": fixed["discovery_seconds"],
                                           "fixed_tau_edges_tested": fixed["edges_tested"],
                                           "fixed_tau_edges_kept": fixed["n_edges_kept"]})
                print(f"{job_id}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
