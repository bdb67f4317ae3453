"""The primary family: the few endpoints the verdicts are read from, planned before the data.

docs/results.md opens with this plan; the claims table reads only from it (secondary tables may be
long, they decide nothing). Every comparison pairs a regime's model with vanilla's of the same
task and seed (vanilla has no lam, so one vanilla model pairs with every lam of a regime: the
comparisons at different lams share it and are not independent replications; Holm's correction
holds under any dependence between them).

Endpoints, the scale each is compared on, and its equivalence margin (why that margin):
- circuit edges at f >= 0.95 (ACDC, resample): the paired ratio, +-25%. Edge counts of one net
  move by 10-20% with ACDC's sender order alone; a smaller margin would call noise a difference.
- ground-truth ROC AUC (planted_teacher: ACDC's per-edge metric increase against the teacher's
  live edges): the paired difference, +-0.02 absolute. AUC is bounded; 0.02 is a tenth of the gap
  between a useless (0.5) and a good (0.7) ranking.
- generalisation gap (held-out f minus discovery f, 1,000 examples each): the paired
  difference, +-0.02 absolute. f is bounded; 0.02 is about its standard error on 1,000 examples.
- test accuracy (classifiers) / test R^2 (regressions): the paired difference, +-0.02 absolute,
  the size of a few test examples' worth on digits' 359.

Reading, after Holm's step-down correction across every p-value of the family (the tests that a
difference is 0 and the equivalence tests, one family): "better"/"worse" where the adjusted p of
"no difference" is < 0.05, with the estimate, its interval and the paired effect size d_z beside
it; "same (+-margin)" where the adjusted TOST p is < 0.05; "n.d." otherwise.

Failures are counted, never dropped silently: a model "did not learn" when its test score is
below the floor chance + half the way from chance to vanilla's mean score on that task (accuracy:
chance = 1 / classes; R^2: chance = 0); a circuit that never reaches f >= 0.95 is "dead". A failed
model has no value to pair, so the cell says how many of the regime's seeds failed, and a regime
with failures is never called "better" on that task's endpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuitry.orchestrator.stats import (log_ratio_effect_size, holm, p_ratio, paired_difference, paired_ratio, tost,
                                          tost_difference)

ALPHA = 0.05
TARGET_F = 0.95


@dataclass(frozen=True)
class Endpoint:
    name: str
    column: str  # in the matched rows (discover rows with their model's train figures)
    scale: str  # "ratio" (paired log ratio) or "difference" (paired x - y)
    margin: float  # relative (ratio) or absolute (difference)
    better: str  # "lower" or "higher"


PRIMARY = (
    Endpoint("circuit edges at f >= 0.95", "n_edges_kept", "ratio", 0.25, "lower"),
    Endpoint("ground-truth ROC AUC", "edge_roc_auc", "difference", 0.02, "higher"),
    Endpoint("generalisation gap", "generalisation_gap", "difference", 0.02, "higher"),
    Endpoint("test accuracy / R^2", "test_score", "difference", 0.02, "higher"),
)
# Read beside the primary family, never into the claims table
SECONDARY = (
    Endpoint("held-out normalised logit gap", "eval_normalized_logit_gap", "difference", 0.02, "lower"),
    Endpoint("edge precision (ground truth)", "edge_precision", "difference", 0.02, "higher"),
    Endpoint("edge recall (ground truth)", "edge_recall", "difference", 0.02, "higher"),
    Endpoint("peak tensor bytes of a step", "peak_tensor_bytes", "ratio", 0.05, "lower"),
)


def test_score(train: pd.DataFrame) -> pd.Series:
    """test accuracy where the task is a classifier's, else test R^2."""
    acc = pd.to_numeric(train.get("test_accuracy", pd.Series(np.nan, index=train.index)), errors="coerce")
    r2 = pd.to_numeric(train.get("test_r2", pd.Series(np.nan, index=train.index)), errors="coerce")
    return acc.where(acc.notna(), r2)


def learned_floor(train: pd.DataFrame, task: str, n_classes: int | None) -> float:
    """chance + half the way from chance to vanilla's mean test score on `task`."""
    chance = 1.0 / n_classes if n_classes else 0.0
    vanilla = train[(train["task"] == task) & (train["regime"] == "vanilla")]
    score = float(test_score(vanilla).mean()) if len(vanilla) else float("nan")
    return chance + (score - chance) / 2


def primary_rows(train: pd.DataFrame, discover: pd.DataFrame, n_classes: dict[str, int | None],
                 ablation: str = "resample") -> pd.DataFrame:
    """One row per model: its task, regime, lam, seed, train figures (test_score, peak_tensor_bytes),
    its ACDC circuit at f >= 0.95 under `ablation` (ascending order), and the failure flags
    `learned` and `reached`."""
    train = train.copy()
    train["test_score"] = test_score(train)
    keep = ["task", "regime", "lam", "seed", "job_id", "test_score", "peak_tensor_bytes"]
    rows = train[[c for c in keep if c in train]].copy()
    rows["learned"] = [s >= learned_floor(train, t, n_classes.get(t)) for t, s in zip(rows["task"], rows["test_score"])]
    d = discover
    if len(d):
        d = d[(d["method"] == "acdc") & (pd.to_numeric(d["target_f"], errors="coerce") == TARGET_F)
              & (d["ablation"] == ablation)]
        if "order" in d:
            d = d[d["order"].fillna("ascending") == "ascending"]
        cols = [e.column for e in PRIMARY + SECONDARY if e.column in d and e.column not in rows]
        circuit = d.set_index("model_id")[cols + (["target_reached"] if "target_reached" in d else [])]
        rows = rows.join(circuit, on="job_id")
    reached = rows["target_reached"] if "target_reached" in rows else pd.Series(True, index=rows.index)
    rows["reached"] = reached.fillna(False).astype(bool) if len(d) else False
    rows.loc[rows["regime"] == "vanilla", "lam"] = np.nan
    return rows


@dataclass
class Comparison:
    task: str
    regime: str
    lam: float
    endpoint: Endpoint
    n: int
    estimate: float  # geometric mean ratio, or mean difference
    low: float
    high: float
    effect_size: float  # d_z of the paired log ratios / differences
    p_differs: float
    p_same: float
    failures: int  # the regime's seeds that did not learn or whose circuit is dead
    vanilla_failures: int
    p_differs_holm: float = float("nan")
    p_same_holm: float = float("nan")

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "-"
        if self.p_differs_holm < ALPHA:
            up = self.estimate > (1.0 if self.endpoint.scale == "ratio" else 0.0)
            good = up == (self.endpoint.better == "higher")
            if good and self.failures:
                return "n.d. (better where learned; failures)"
            return "better" if good else "worse"
        if self.p_same_holm < ALPHA:
            return "same"
        return "n.d."

    def text(self) -> str:
        e = self.endpoint
        if self.n == 0:
            return "-"
        if e.scale == "ratio":
            value = f"x{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"
        else:
            value = f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"
        margin = f"±{e.margin:.0%}" if e.scale == "ratio" else f"±{e.margin:g}"
        reading = self.verdict if self.verdict != "same" else f"same {margin}"
        fails = f", {self.failures} failed" if self.failures else ""
        d = f", d_z {self.effect_size:+.2g}" if math.isfinite(self.effect_size) else ""
        return f"{value} {reading} (n={self.n}{fails}{d})"


def _paired(rows: pd.DataFrame, task: str, regime: str, lam, column: str):
    mine = rows[(rows["task"] == task) & (rows["regime"] == regime)]
    if regime != "vanilla":
        mine = mine[np.isclose(mine["lam"].astype(float), lam)]
    base = rows[(rows["task"] == task) & (rows["regime"] == "vanilla")]
    ok = lambda f: f[f["learned"] & f["reached"]]  # noqa: E731
    failures = int((~(mine["learned"] & mine["reached"])).sum())
    vanilla_failures = int((~(base["learned"] & base["reached"])).sum())
    pair = pd.merge(ok(mine)[["seed", column]], ok(base)[["seed", column]], on="seed", suffixes=("", "_vanilla"))
    x = pd.to_numeric(pair[column], errors="coerce").to_numpy(float)
    y = pd.to_numeric(pair[column + "_vanilla"], errors="coerce").to_numpy(float)
    return x, y, failures, vanilla_failures


def _identical_within(x: np.ndarray, y: np.ndarray, e: Endpoint) -> bool:
    """Every pair has the same ratio (or difference), inside the margin, from enough pairs: a
    figure the regimes cannot change (a step's tensor bytes of one architecture), not noise."""
    ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) & (y > 0) if e.scale == "ratio" else True)
    if ok.sum() < 3:
        return False
    v = np.log(x[ok] / y[ok]) if e.scale == "ratio" else x[ok] - y[ok]
    bound = math.log1p(e.margin) if e.scale == "ratio" else e.margin
    return bool(np.ptp(v) == 0 and abs(v[0]) < bound)


def compare(rows: pd.DataFrame, endpoints=PRIMARY, regimes=("l1", "local", "swap", "bimt", "prune")) -> list[Comparison]:
    """Every regime x lam of every task against vanilla on `endpoints`, Holm-adjusted as one family."""
    out = []
    for task in sorted(rows["task"].unique()):
        t = rows[rows["task"] == task]
        for regime in [r for r in regimes if r in set(t["regime"])]:
            for lam in sorted(t[t["regime"] == regime]["lam"].dropna().unique()):
                for e in endpoints:
                    if e.column not in rows or t[e.column].isna().all():
                        continue
                    x, y, fails, vfails = _paired(rows, task, regime, lam, e.column)
                    if e.scale == "ratio":
                        r = paired_ratio(x, y)
                        c = Comparison(task, regime, lam, e, r.n, r.geometric_mean, r.low, r.high,
                                       log_ratio_effect_size(x, y), p_ratio(x, y), tost(x, y, e.margin).p_value,
                                       fails, vfails)
                    else:
                        d = paired_difference(x, y)
                        c = Comparison(task, regime, lam, e, d.n, d.mean, d.low, d.high, d.effect_size, d.p_value,
                                       tost_difference(x, y, e.margin).p_value, fails, vfails)
                    if _identical_within(x, y, e):
                        c.p_same = 0.0  # no spread at all and inside the margin: equal, not untestable
                    out.append(c)
    adjusted = holm([c.p_differs for c in out] + [c.p_same for c in out])
    for i, c in enumerate(out):
        c.p_differs_holm, c.p_same_holm = adjusted[i], adjusted[len(out) + i]
    return out


def failures_table(rows: pd.DataFrame) -> str:
    """Per task and regime (and lam): seeds, nets that did not learn, dead circuits."""
    lines = ["| task | regime | lam | seeds | did not learn | circuit dead (f >= 0.95 not reached) |",
             "|---|---|---|---|---|---|"]
    for (task, regime, lam), g in rows.groupby(["task", "regime", rows["lam"].fillna(-1)], sort=True):
        lam_text = "-" if lam == -1 else f"{lam:g}"
        lines.append(f"| {task} | {regime} | {lam_text} | {len(g)} | {int((~g['learned']).sum())} | "
                     f"{int((g['learned'] & ~g['reached']).sum())} |")
    return "\n".join(lines)


def comparisons_table(comparisons: list[Comparison]) -> str:
    lines = ["| task | regime vs vanilla | lam | endpoint | estimate [95% CI] reading (n, failures, d_z) | "
             "p (Holm) differs / same |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c.task} | {c.regime} | {c.lam:g} | {c.endpoint.name} | {c.text()} | "
                     f"{c.p_differs_holm:.2g} / {c.p_same_holm:.2g} |")
    return "\n".join(lines)
