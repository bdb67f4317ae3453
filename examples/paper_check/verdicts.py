"""The verdict rows of docs/results.md from the check sweeps: paired log-ratio t-intervals (95%)
over seeds for l1 and bimt against vanilla, and bimt against l1 with TOST at ±25%, on ACDC
circuits at tau = 0.01, faithfulness graded on the held-out evaluation examples.

    python examples/paper_check/verdicts.py [SWEEPS_ROOT]      (default: sweeps)
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from circuitry.orchestrator.stats import paired_ratio, tost

SWEEPS = ("check_two_moons", "check_independence", "check_digits")
FIGURES = (("eval_faithfulness", "held-out f"), ("n_edges_kept", "edges kept"), ("edges_tested", "edges tested"))


def interval(r) -> str:
    if r.n == 0:
        return "undefined"
    return f"{r.geometric_mean:.3g} [{r.low:.3g}, {r.high:.3g}]" if r.n > 1 else f"{r.geometric_mean:.3g}"


def verdict_rows(jobs: pd.DataFrame, spec: str) -> list[tuple]:
    acdc = jobs[(jobs.kind == "discover") & (jobs.method == "acdc") & np.isclose(jobs.threshold.astype(float), 0.01)]

    def values(regime, column):  # one value per model seed, in seed order, so regimes pair by seed
        return pd.to_numeric(acdc[acdc.regime == regime].sort_values("train_seed")[column], errors="coerce").to_numpy()

    task, rows = acdc.task.iloc[0], []
    for other in ("l1", "bimt"):
        for column, label in FIGURES:
            r = paired_ratio(values(other, column), values("vanilla", column))
            rows.append((task, f"{other} ÷ vanilla", label, interval(r), r.n, r.n_undefined,
                         "t-interval on paired log ratios", "yes" if r.excludes_1 else "no", spec))
    for column, label in FIGURES[:2]:
        r, t = paired_ratio(values("bimt", column), values("l1", column)), tost(values("bimt", column), values("l1", column))
        rows.append((task, "bimt ÷ l1", label, interval(r), r.n, r.n_undefined, f"TOST ±25%: p = {t.p_value:.3g}",
                     "equivalent" if t.equivalent else "not shown equivalent", spec))
    return rows


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "sweeps")
    rows = [r for name in SWEEPS
            for r in verdict_rows(pd.read_parquet(root / name / "jobs.parquet"), f"examples/paper_check/{name}.toml")]
    header = ("task", "comparison", "figure (ACDC, tau 0.01)", "ratio [95% CI]", "n", "undefined", "test", "result",
              "spec")
    for line in (header, ("---",) * len(header), *rows):
        print("| " + " | ".join(str(v) for v in line) + " |")
