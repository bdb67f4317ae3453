"""The pruning control at a common test score (issue 29), in one process:

    python examples/prune_control.py --task independence --steps 4000 --seeds 0 1 2 --out sweeps/prune_control

Per seed: a vanilla net; bimt over a lam grid; the vanilla net gradually magnitude-pruned
(workers.prune.gradual_prune: Zhu & Gupta's cubic schedule, fine-tuned as many steps as bimt
trains) over a grid of final sparsities spanning bimt's weight counts. Every net's circuit is
ACDC's sparsest with f >= 0.95 (resample). Each regime's points of one seed trace a curve of log
circuit edges against test score (accuracy, or R^2 for a regression); both curves are
interpolated at one common score, the middle of the range every seed's two curves cover, and
bimt ÷ gmp edges there is summarised over seeds by its geometric mean with a percentile bootstrap
interval (orchestrator.stats.bootstrap_interval). Rows go to OUT/rows.csv, the summary to stdout.

    python examples/prune_control.py --report sweeps/prune_two_moons sweeps/prune_independence sweeps/prune_digits

reads finished folders only: per task the mean of each setting and the reading at its own common
score, then the pooled reading over tasks (the geometric mean of the tasks' geometric means, with
a bootstrap that resamples seeds within each task, so every task keeps its weight and its seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuitry.orchestrator.stats import bootstrap_interval  # noqa: E402
from circuitry.workers.discover import discover  # noqa: E402
from circuitry.workers.prune import GradualConfig, gradual_prune  # noqa: E402
from circuitry.workers.train import TrainConfig, train  # noqa: E402


def score_of(metrics: dict) -> float:
    return metrics["test_accuracy"] if "test_accuracy" in metrics else metrics["test_r2"]


def row(task, regime, seed, setting, result) -> dict:
    d = discover(result.checkpoint, "acdc", target_f=0.95, device="cpu").summary
    weights = result.checkpoint["weights"]
    return {"task": task, "regime": regime, "seed": seed, "setting": setting, "test_score": score_of(result.metrics),
            "n_edges_kept": d["n_edges_kept"], "target_reached": d["target_reached"],
            "weights_nonzero": sum(int((w != 0).sum()) for w in weights),
            "weights_above_1e-2": result.metrics["weights_above_1e-2"]}


def run(task: str, steps: int, seeds, lams, sparsities, out: Path) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.csv"
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    rows = done.to_dict("records")
    have = {(r["regime"], r["seed"], float(r["setting"])) for r in rows}
    for seed in seeds:
        vanilla = None
        for lam in lams:
            if ("bimt", seed, lam) not in have:
                rows.append(row(task, "bimt", seed, lam, train(TrainConfig(task, "bimt", steps, seed, lam=lam, device="cpu"))))
                pd.DataFrame(rows).to_csv(path, index=False)
        for s in sparsities:
            if ("gmp", seed, s) not in have:
                if vanilla is None:
                    vanilla = train(TrainConfig(task, "vanilla", steps, seed, device="cpu"))
                rows.append(row(task, "gmp", seed, s, gradual_prune(vanilla.checkpoint, GradualConfig(s, steps, device="cpu"))))
                pd.DataFrame(rows).to_csv(path, index=False)
    return pd.DataFrame(rows)


def _curve(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    g = g[g["target_reached"].astype(bool)].sort_values("test_score")
    return g["test_score"].to_numpy(float), np.log(g["n_edges_kept"].clip(lower=1).to_numpy(float))


def at_common_score(rows: pd.DataFrame, position: float = 0.5) -> dict:
    """bimt ÷ gmp circuit edges at one common test score (module doc): `position` of the way up
    the range every seed's two curves cover (the middle as planned; other positions show whether
    the reading depends on the level)."""
    curves = {(r, s): _curve(g) for (r, s), g in rows.groupby(["regime", "seed"])}
    seeds = sorted(set(rows["seed"]))
    lows = [c[0].min() for c in curves.values() if len(c[0])]
    highs = [c[0].max() for c in curves.values() if len(c[0])]
    low, high = max(lows), min(highs)
    if not low < high:
        return {"common_score": None, "why": f"the curves share no score range ({low:.4g} > {high:.4g})"}
    level = low + position * (high - low)
    logs = []
    for s in seeds:
        b, g = curves.get(("bimt", s)), curves.get(("gmp", s))
        if b is None or g is None or len(b[0]) < 2 or len(g[0]) < 2:
            continue
        logs.append(np.interp(level, *b) - np.interp(level, *g))
    logs = np.array(logs)
    lo, hi = bootstrap_interval(logs)
    return {"common_score": level, "score_range": [low, high], "n_seeds": len(logs),
            "bimt_over_gmp_edges": math.exp(logs.mean()) if len(logs) else None,
            "bootstrap_95": [math.exp(lo), math.exp(hi)] if math.isfinite(lo) else None,
            "per_seed": [math.exp(v) for v in logs]}


def pooled(per_task: dict[str, list[float]], n_resamples: int = 10_000, seed: int = 0) -> dict:
    """bimt ÷ gmp over tasks: exp of the mean over tasks of each task's mean per-seed log ratio,
    with a percentile bootstrap resampling seeds within each task (stratified: tasks fixed)."""
    logs = {t: np.log(np.asarray(v, dtype=float)) for t, v in per_task.items() if len(v) >= 2}
    if not logs:
        return {"n_tasks": 0}
    point = float(np.mean([v.mean() for v in logs.values()]))
    rng = np.random.default_rng(seed)
    stats = [np.mean([v[rng.integers(0, len(v), len(v))].mean() for v in logs.values()]) for _ in range(n_resamples)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {"n_tasks": len(logs), "n_seeds": sum(len(v) for v in logs.values()), "bimt_over_gmp_edges": math.exp(point),
            "bootstrap_95": [math.exp(lo), math.exp(hi)],
            "seeds_below_1": int(sum((v < 0).sum() for v in logs.values()))}


def report(folders: list[Path]) -> None:
    """Per task: the settings' means and the common-score reading; then the pooled reading."""
    per_task = {}
    for folder in folders:
        rows = pd.read_csv(folder / "rows.csv")
        for task, g in rows.groupby("task"):
            live = g.assign(n_edges_kept=g["n_edges_kept"].where(g["target_reached"].astype(bool)))
            table = live.groupby(["regime", "setting"]).agg(  # edges: mean over circuits that reach f >= 0.95
                test_score=("test_score", "mean"), n_edges_kept=("n_edges_kept", "mean"),
                weights_nonzero=("weights_nonzero", "mean"), weights_above_1e_2=("weights_above_1e-2", "mean"),
                reached=("target_reached", "sum"), seeds=("seed", "nunique"))
            result = at_common_score(g)
            print(f"## {task} ({folder})\n{table.to_string()}\n{json.dumps(result, indent=1)}")
            for position in (0.25, 0.75):  # sensitivity to the level, not the planned reading
                r = at_common_score(g, position)
                if r.get("per_seed"):
                    print(f"at {position:.0%} of the range (score {r['common_score']:.4g}): "
                          f"x{r['bimt_over_gmp_edges']:.3g}, per seed " + ", ".join(f"{v:.3g}" for v in r["per_seed"]))
            print()
            if result.get("per_seed"):
                per_task[task] = result["per_seed"]
    print("## pooled over tasks\n" + json.dumps(pooled(per_task), indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="independence")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lams", type=float, nargs="+", default=[1e-4, 4.64e-4, 2.15e-3, 1e-2])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.975])
    ap.add_argument("--out", type=Path, default=Path("sweeps/prune_control"))
    ap.add_argument("--report", type=Path, nargs="+", help="finished folders: per-task and pooled readings, no runs")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    torch.set_num_threads(1)
    rows = run(args.task, args.steps, args.seeds, args.lams, args.sparsities, args.out)
    print(rows.groupby(["regime", "setting"])[["test_score", "n_edges_kept", "weights_nonzero"]].mean().to_string())
    print(json.dumps(at_common_score(rows), indent=1))


if __name__ == "__main__":
    main()
