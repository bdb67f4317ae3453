"""The verdict rows of docs/results.md, from the matched sweep (examples/paper.toml), or with
--one-tau those of the earlier check sweeps (examples/paper_check/*.toml, ACDC at tau = 0.01).

    python examples/paper_verdicts.py sweeps/paper
    python examples/paper_verdicts.py sweeps/full_length --primary     # the primary family
    python examples/paper_verdicts.py sweeps --one-tau      # SWEEPS_ROOT holding the check sweeps

`--primary` prints the planned primary family (orchestrator.primary): failures per regime, then
every comparison with vanilla on the primary endpoints, Holm-adjusted across the family, and the
secondary endpoints beside it (not adjusted with it, never read into the claims table). It reads a
sweep's jobs.parquet, or the train.csv and discover.csv of examples/primary_runs.py.

Each of the seed paper's claims, per task and per lam, as bimt ÷ the regime it is compared with,
paired by seed: circuit figures at matched faithfulness (ACDC's sparsest circuit with f >= 0.95
on the discovery examples; `--method eap-ig` for attribution's smallest top-k), training figures
from the same models. A cell is the geometric mean of the paired ratios, its 95% t-interval and
what may be said of it (orchestrator.matched.reading): "better"/"worse" where the interval
excludes 1, "same" where a TOST at ±25% passes, "n.d." (not distinguishable) otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuitry.orchestrator.matched import FIGURES, compare_at_lam, matched_rows, paired_by_seed, reading  # noqa: E402
from circuitry.orchestrator.primary import (PRIMARY, SECONDARY, compare, comparisons_table, failures_table,  # noqa: E402
                                            primary_rows)
from circuitry.orchestrator.report_tables import fmt, load_jobs, ratio_text  # noqa: E402
from circuitry.orchestrator.stats import log_ratio_effect_size, paired_ratio, tost  # noqa: E402
from circuitry.tasks import get_task  # noqa: E402

MEMORY_MARGIN = 0.05

# (claim, the regime bimt is compared with, figure label in orchestrator.matched.FIGURES)
CIRCUIT_CLAIMS = [
    ("sparser circuits than vanilla", "vanilla", "edges at target f"),
    ("circuits generalise (held-out f) better than vanilla's", "vanilla", "held-out f"),
    ("circuits found with fewer trials than vanilla's", "vanilla", "edges tested"),
    ("sparser than L1 alone (same lam)", "l1", "edges at target f"),
    ("sparser than locality alone (local, no swaps)", "local", "edges at target f"),
    ("sparser than swaps alone (swap: L1 + swaps)", "swap", "edges at target f"),
    ("sparser than pruning vanilla to bimt's weight count", "prune", "edges at target f"),
    ("circuits match the ground truth better than vanilla's", "vanilla", "ground-truth ROC AUC"),
    ("circuits keep the logit gap better than vanilla's", "vanilla", "held-out normalised logit gap"),
    ("no cost in test accuracy against vanilla", "vanilla", "test accuracy"),
    ("no cost in test loss against vanilla (logit scale: secondary)", "vanilla", "test loss"),
]
# (claim, figure column of the train rows, better); None: described, never read as better/worse.
# Wall time in a sweep is measured under whatever else the machine runs (benchmarks/regimes.py
# times the regimes interleaved in one process); memory is the allocator's view of one step.
TRAIN_CLAIMS = [
    ("training time against vanilla (sweep wall time: descriptive)", "train_seconds", None),
    ("peak tensor bytes of a step against vanilla", "peak_tensor_bytes", "lower"),
]
SHORT = {"bimt better": "better", "bimt worse": "worse", "the same within ±25% (TOST)": "same ±25%"}


def short(text: str) -> str:
    if text.startswith("not distinguishable"):
        return "n.d."
    if text.startswith("no claim"):
        return "no claim"
    return SHORT.get(text, text)


def cell(r, t, better) -> str:
    if r.n == 0:
        return "-"
    if better is None:
        return f"{ratio_text(r)} (n={r.n})"
    return f"{ratio_text(r)} {short(reading(r, t, better))} (n={r.n})"


def train_cells(train: pd.DataFrame, task: str, col: str, better: str | None, lams) -> list[str]:
    rows = train[train["task"] == task]
    if col not in rows:
        return ["-" for _ in lams]
    base = rows[rows["regime"] == "vanilla"]
    return [memory_cell(rows[(rows["regime"] == "bimt") & (rows["lam"] == lam)], base, col, better) for lam in lams]


def memory_cell(mine: pd.DataFrame, base: pd.DataFrame, col: str, better: str | None) -> str:
    """bimt ÷ vanilla of a train figure; a cost is "the same" within ±5% (MEMORY_MARGIN), not the
    edges' ±25%, which is 25 times any real difference in memory."""
    x, y = mine.groupby("seed")[col].mean(), base.groupby("seed")[col].mean()
    common = x.index.intersection(y.index)
    x, y = x[common].to_numpy(), y[common].to_numpy()
    r = paired_ratio(x, y)
    if r.n == 0:
        return "-"
    if better is None:
        return f"{ratio_text(r)} (n={r.n})"
    if r.excludes_1:
        text = "better" if (r.geometric_mean < 1) == (better == "lower") else "worse"
        text += f", d_z {log_ratio_effect_size(x, y):+.2g}"
    elif tost(x, y, MEMORY_MARGIN).equivalent:
        text = f"same ±{MEMORY_MARGIN:.0%}"
    else:
        text = "n.d."
    return f"{ratio_text(r)} {text} (n={r.n})"


def verdict_table(sweep: Path, method: str) -> str:
    train, discover = load_jobs(sweep)
    rows = matched_rows(train, discover, method)
    if "order" in rows:
        rows = rows[rows["order"] == "ascending"]
    lines = []
    for task in sorted(rows["task"].unique()):
        g = rows[rows["task"] == task]
        lams = sorted(g[g["regime"] == "bimt"]["lam"].unique())
        if not lines:
            lines += ["| task | bimt ... | " + " | ".join(f"lam #{i + 1}" for i in range(len(lams))) + " |",
                      "|---|---|" + "---|" * len(lams)]
        lines.append(f"| {task} | lam = | " + " | ".join(fmt(lam) for lam in lams) + " |")
        by = {}
        for other in sorted({o for _, o, _ in CIRCUIT_CLAIMS}):
            for c in compare_at_lam(g, other):
                by[(other, c["figure"], c["lam"])] = c
        for claim, other, figure in CIRCUIT_CLAIMS:
            better = next(b for _, label, b in FIGURES if label == figure)
            cells = [cell(by[(other, figure, lam)]["ratio"], by[(other, figure, lam)]["tost"], better)
                     if (other, figure, lam) in by else "-" for lam in lams]
            lines.append(f"| {task} | {claim}: {figure} | " + " | ".join(cells) + " |")
        if method == "acdc":
            for claim, col, better in TRAIN_CLAIMS:
                lines.append(f"| {task} | {claim}: {col} | " + " | ".join(train_cells(train, task, col, better, lams))
                             + " |")
    return "\n".join(lines)


def load_runs(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, discover rows) of a sweep folder or of examples/primary_runs.py's CSVs."""
    if (folder / "train.csv").is_file():
        discover = pd.read_csv(folder / "discover.csv") if (folder / "discover.csv").is_file() else pd.DataFrame()
        if "metric" in discover:  # the verdicts read circuits under the task's own metric (an empty cell)
            discover = discover[discover["metric"].isna()]
        return pd.read_csv(folder / "train.csv"), discover
    return load_jobs(folder)


def primary_report(folders: list[Path], ablation: str) -> str:
    frames = [load_runs(f) for f in folders]
    train = pd.concat([t for t, _ in frames], ignore_index=True)
    discover = pd.concat([d for _, d in frames], ignore_index=True)
    classes = {t: get_task(t).n_outputs if get_task(t).kind == "classification" else None for t in set(train["task"])}
    if train.groupby("task")["steps"].nunique().max() > 1:  # one task at several lengths: compare within each
        label = train["task"] + " (" + train["steps"].map("{:,}".format) + " steps)"
        classes = {lab: classes[t] for lab, t in zip(label, train["task"])}
        train["task"] = label
    rows = primary_rows(train, discover, classes, ablation)
    out = [f"Failures ({ablation} ablation):", "", failures_table(rows), "",
           "Primary family (Holm across it):", "", comparisons_table(compare(rows, PRIMARY)), "",
           "Secondary (Holm within the secondary endpoints; never read into the claims table):", "",
           comparisons_table(compare(rows, SECONDARY))]
    return "\n".join(out)


# ---------------------------------------------------------------- the earlier check sweeps, at one tau
# Paired log-ratio t-intervals (95%) over seeds for l1 and bimt against vanilla, and bimt against l1
# with TOST at ±25%, on ACDC circuits at tau = 0.01, faithfulness graded on the held-out examples.
CHECK_SWEEPS = ("check_two_moons", "check_independence", "check_digits")
CHECK_FIGURES = (("eval_faithfulness", "held-out f"), ("n_edges_kept", "edges kept"), ("edges_tested", "edges tested"))


def interval(r) -> str:
    if r.n == 0:
        return "undefined"
    return f"{r.geometric_mean:.3g} [{r.low:.3g}, {r.high:.3g}]" if r.n > 1 else f"{r.geometric_mean:.3g}"


def one_tau_rows(jobs: pd.DataFrame, spec: str) -> list[tuple]:
    acdc = jobs[(jobs.kind == "discover") & (jobs.method == "acdc") & np.isclose(jobs.threshold.astype(float), 0.01)]

    def values(regime, column):  # one value per model seed, in seed order, so regimes pair by seed
        return pd.to_numeric(acdc[acdc.regime == regime].sort_values("train_seed")[column], errors="coerce").to_numpy()

    task, rows = acdc.task.iloc[0], []
    for other in ("l1", "bimt"):
        for column, label in CHECK_FIGURES:
            r = paired_ratio(values(other, column), values("vanilla", column))
            rows.append((task, f"{other} ÷ vanilla", label, interval(r), r.n, r.n_undefined,
                         "t-interval on paired log ratios", "yes" if r.excludes_1 else "no", spec))
    for column, label in CHECK_FIGURES[:2]:
        r, t = paired_ratio(values("bimt", column), values("l1", column)), tost(values("bimt", column), values("l1", column))
        rows.append((task, "bimt ÷ l1", label, interval(r), r.n, r.n_undefined, f"TOST ±25%: p = {t.p_value:.3g}",
                     "equivalent" if t.equivalent else "not shown equivalent", spec))
    return rows


def one_tau_table(root: Path) -> str:
    rows = [r for name in CHECK_SWEEPS
            for r in one_tau_rows(pd.read_parquet(root / name / "jobs.parquet"), f"examples/paper_check/{name}.toml")]
    header = ("task", "comparison", "figure (ACDC, tau 0.01)", "ratio [95% CI]", "n", "undefined", "test", "result",
              "spec")
    return "\n".join("| " + " | ".join(str(v) for v in line) + " |" for line in (header, ("---",) * len(header), *rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", type=Path, nargs="+",
                    help="the matched sweep's folder (--primary: one or more); with --one-tau, the folder of the check sweeps")
    ap.add_argument("--method", default="acdc", choices=["acdc", "eap-ig", "eap", "exact"])
    ap.add_argument("--primary", action="store_true", help="the primary family (module doc)")
    ap.add_argument("--ablation", default="resample", help="--primary: the circuits' ablation")
    ap.add_argument("--one-tau", action="store_true", help="the earlier check sweeps' rows (ACDC at tau = 0.01)")
    args = ap.parse_args()
    if args.primary:
        print(primary_report(args.sweep, args.ablation))
    elif args.one_tau:
        print(one_tau_table(args.sweep[0]))
    else:
        print(verdict_table(args.sweep[0], args.method))


if __name__ == "__main__":
    main()
