"""The report's main comparison: regimes at matched strength, circuits at matched faithfulness.

A fixed tau compares circuits at different faithfulness (a dense net loses more f over its many
removed edges), so the comparison reads circuits found with `target_f`: per model, the sparsest
ACDC circuit (largest tau) that still reaches f >= target on the discovery examples. And a single
lam compares a regime at one penalty strength, so each regime runs over a lam grid:

- the Pareto view: per task, every (regime, lam) point's test loss against its circuit's edges at
  the target f (means over seeds), vanilla as one point; a point is on the front when no other
  point has both a lower-or-equal loss and fewer-or-equal edges (one strictly);
- matched comparisons: bimt ÷ each other regime at the same task and lam, paired by seed (vanilla,
  which has no lam, pairs with every lam), as geometric means of paired ratios with a 95%
  t-interval, and a TOST at +-25% before anything is called "the same".
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from circuitry.orchestrator.report_tables import fmt, ratio_text, sorted_regimes
from circuitry.orchestrator.stats import MIN_N_FOR_CLAIM, RatioSummary, Tost, paired_ratio, tost
from circuitry.orchestrator.store import save_png

TARGET = 0.95  # the headline target; other targets a sweep ran get their own tables
MARGIN = 0.25  # TOST margin: "the same" means the ratio lies within [1/1.25, 1.25]
NO_LAM = ("vanilla",)  # regimes that take no penalty strength: one point, paired with every lam
# (column, label, better) compared at matched f; train figures come from the model's train row
# (the verdicts themselves read the planned primary family, orchestrator.primary; these per-lam
# ratios are its secondary tables; R^2, which can be negative, is compared there as a difference)
FIGURES = [
    ("n_edges_kept", "edges at target f", "lower"),
    ("eval_faithfulness", "held-out f", "higher"),
    ("eval_normalized_logit_gap", "held-out normalised logit gap", "lower"),
    ("edge_roc_auc", "ground-truth ROC AUC", "higher"),
    ("test_accuracy", "test accuracy", "higher"),
    ("test_loss", "test loss", "lower"),
    ("edges_tested", "edges tested", "lower"),
]
TRAIN_FIGURES = ("test_loss", "test_accuracy", "test_r2")


def matched_rows(train: pd.DataFrame, discover: pd.DataFrame, method: str = "acdc") -> pd.DataFrame:
    """Discover rows found at a target f by `method`, with their model's test loss and accuracy."""
    if discover.empty or "target_f" not in discover or method not in set(discover.get("method", [])):
        return pd.DataFrame()
    rows = discover[(discover["method"] == method) & discover["target_f"].notna()].copy()
    # a model whose circuits never reach the target (a dead net: f undefined even for the full
    # circuit) has no circuit at matched f; it stays in the table, flagged, and out of the figures
    rows["reached"] = rows["target_reached"].fillna(True).astype(bool) if "target_reached" in rows else True
    models = train.set_index("job_id")
    for col in TRAIN_FIGURES:
        if col in models:
            rows[col] = pd.to_numeric(rows["model_id"].map(models[col]), errors="coerce")
    return rows


def _mean(values) -> float:
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    return float(v.mean()) if len(v) else float("nan")


def pareto_points(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (regime, lam) of one task and target: means over seeds and the Pareto flag."""
    points = []
    # a regime without lam is one point, whatever lam its rows record
    point_lam = rows["lam"].where(~rows["regime"].isin(NO_LAM))
    for (regime, lam), g in rows.groupby([rows["regime"], point_lam], dropna=False, sort=False):
        seeds = g["seed"].nunique()
        g = g[g["reached"]]
        points.append({"regime": regime, "lam": lam, "seeds": seeds, "reached": g["seed"].nunique(),
                       "test_loss": _mean(g.get("test_loss")), "test_accuracy": _mean(g.get("test_accuracy")),
                       "edges": _mean(g["n_edges_kept"]), "held_out_f": _mean(g.get("eval_faithfulness")),
                       "tau_found": _geometric_mean_positive(g.get("tau_found"))})
    frame = pd.DataFrame(points)
    loss, edges = frame["test_loss"].to_numpy(), frame["edges"].to_numpy()
    front = []
    for i in range(len(frame)):
        dominated = (loss <= loss[i]) & (edges <= edges[i]) & ((loss < loss[i]) | (edges < edges[i]))
        front.append(not dominated.any() and math.isfinite(loss[i]) and math.isfinite(edges[i]))
    frame["pareto"] = front
    order = {r: i for i, r in enumerate(sorted_regimes(frame["regime"]))}
    return frame.sort_values(["regime", "lam"], key=lambda c: c.map(order) if c.name == "regime" else c)


def _geometric_mean_positive(taus) -> float:
    """Geometric mean of the taus above 0 (a search that ends at tau = 0, its fallback, would
    make a plain one 0 whatever the other seeds found); NaN when there are none."""
    if taus is None:
        return float("nan")
    taus = taus.astype(float)
    pos = taus[taus > 0]
    return float(np.exp(np.log(pos).mean())) if len(pos) else float("nan")


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt(x)


def pareto_table(points: pd.DataFrame) -> str:
    has_acc = points["test_accuracy"].notna().any()
    head = ["regime", "lam", "seeds", "target reached", "test loss"] + (["test accuracy"] if has_acc else []) + [
        "edges at target f", "held-out f", "tau found (geo. mean of those > 0)", "on the front"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, p in points.iterrows():
        cells = [p["regime"], _fmt(p["lam"]), str(p["seeds"]), str(p["reached"]), _fmt(p["test_loss"])]
        cells += [_fmt(p["test_accuracy"])] if has_acc else []
        cells += [_fmt(p["edges"]), _fmt(p["held_out_f"]), _fmt(p["tau_found"]), "yes" if p["pareto"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reading(r: RatioSummary, t: Tost, better: str) -> str:
    """What a reviewer may say of one paired ratio."""
    if r.n < MIN_N_FOR_CLAIM:
        return f"no claim (n = {r.n})"
    if r.excludes_1:
        lower = r.geometric_mean < 1
        return "bimt better" if lower == (better == "lower") else "bimt worse"
    if t.equivalent:
        return f"the same within ±{MARGIN:.0%} (TOST)"
    return f"not distinguishable with n = {r.n}"


def paired_by_seed(mine: pd.DataFrame, theirs: pd.DataFrame, col: str):
    """`col` of `mine` ÷ `theirs` paired by seed (each seed's mean): the geometric-mean ratio with
    its interval, and the TOST at ±MARGIN."""
    x, y = mine.groupby("seed")[col].mean(), theirs.groupby("seed")[col].mean()
    common = x.index.intersection(y.index)
    x, y = x[common].to_numpy(), y[common].to_numpy()
    return paired_ratio(x, y), tost(x, y, MARGIN)


def compare_at_lam(rows: pd.DataFrame, other: str, regime: str = "bimt") -> list[dict]:
    """`regime` ÷ `other` per lam, paired by seed, for every figure."""
    out = []
    rows = rows[rows["reached"]]
    mine = rows[rows["regime"] == regime]
    theirs = rows[rows["regime"] == other]
    for lam, g in mine.groupby("lam", sort=True):
        base = theirs if other in NO_LAM else theirs[theirs["lam"] == lam]
        if base.empty:
            continue
        for col, label, better in FIGURES:
            if col not in g or not g[col].notna().any():
                continue
            r, t = paired_by_seed(g, base, col)
            out.append({"vs": other, "lam": lam, "figure": label, "ratio": r, "tost": t,
                        "reading": reading(r, t, better)})
    return out


def comparison_table(results: list[dict], regime: str = "bimt") -> str:
    head = ["comparison", "lam", "figure", "ratio [95% CI]", "n", f"TOST ±{MARGIN:.0%} p", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in results:
        p = c["tost"].p_value
        cells = [f"{regime} ÷ {c['vs']}", _fmt(c["lam"]), c["figure"], ratio_text(c["ratio"]), str(c["ratio"].n),
                 "-" if math.isnan(p) else f"{p:.2g}", c["reading"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure_pareto(task: str, target: float, points: pd.DataFrame, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for regime, g in points.groupby("regime", sort=False):
        g = g.sort_values("lam")
        style = {"marker": "*", "ms": 12, "ls": "none"} if regime in NO_LAM else {"marker": "o", "ms": 4}
        ax.plot(g["edges"], g["test_loss"], label=regime, **style)
        for _, p in g.iterrows():
            if not math.isnan(p["lam"]):
                ax.annotate(f"{p['lam']:.2g}", (p["edges"], p["test_loss"]), fontsize=6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"ACDC circuit edges at f >= {target:g} (mean over seeds)")
    ax.set_ylabel("test loss (mean over seeds)")
    ax.set_title(f"{task}: lower left is better; labels are lam", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"pareto_{task}_f{target:g}.png"
    save_png(fig, path, dpi=100)
    plt.close(fig)
    return path


def matched_sections(train: pd.DataFrame, discover: pd.DataFrame, out: Path) -> tuple[list[str], list[Path]]:
    """The report's lines and figures for circuits at matched faithfulness (none without target_f rows)."""
    rows = matched_rows(train, discover)
    if rows.empty:
        return [], []
    lines = ["## At matched faithfulness and matched strength", "",
             "Circuits found with `target_f`: per model, ACDC's sparsest circuit (largest tau, to within a "
             "factor 1.2) whose f on the discovery examples reaches the target; held-out f grades it on the "
             "evaluation examples. Each regime runs over a lam grid; vanilla (no lam) is one point. Points: "
             "means over the seeds whose circuits reach the target (`target reached`; a dead net, e.g. one "
             "pruned to a handful of weights, has none: its f is undefined even for the full circuit). "
             "Comparisons: bimt ÷ another regime at the same lam, paired by seed, geometric "
             f"mean with a 95% t-interval on the log ratios; \"the same\" only where a TOST at ±{MARGIN:.0%} "
             f"passes (p < 0.05); claims need n >= {MIN_N_FOR_CLAIM}."]
    pictures = []
    targets = sorted(rows["target_f"].unique(), key=lambda t: (t != TARGET, t))
    for task in sorted(rows["task"].unique()):
        for target in targets:
            g = rows[(rows["task"] == task) & (rows["target_f"] == target)]
            if g.empty:
                continue
            points = pareto_points(g)
            lines += ["", f"### {task}, f >= {target:g}", "", pareto_table(points)]
            pictures.append(figure_pareto(task, target, points, out))
            lines.append(f"![pareto {task}]({pictures[-1].name})")
            if "bimt" not in set(g["regime"]):
                continue
            results = [c for other in [r for r in points["regime"].unique() if r != "bimt"]
                       for c in compare_at_lam(g, other)]
            if results:
                lines += ["", comparison_table(results)]
    return lines, pictures
