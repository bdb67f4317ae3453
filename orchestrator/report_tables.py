"""The report's tables: jobs.parquet read into train and discover rows, and the rows summarised.

Tables: one row per task x regime x the settings that name a discovery (method, threshold,
ablation, ...); each cell is the arithmetic mean over seeds with a 95% t-interval, and says how many
seeds' values are undefined (NaN, e.g. f of a collapsed model). Ratios: every regime against
vanilla, paired by seed and by everything else that names the job, summarised as a geometric
mean with a t-interval on the log ratios (orchestrator.stats). Order sensitivity: ACDC's circuits
under other sender orders against the ascending one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from circuitry.orchestrator.spec import TRAIN_GRID
from circuitry.orchestrator.stats import MIN_N_FOR_CLAIM, RatioSummary, paired_ratio, t_half_width
from circuitry.workers.names import BASELINE_REGIME, REGIMES

# (column, label, better): better is "higher" or "lower"
QUALITY = [
    ("faithfulness", "faithfulness f", "higher"),
    ("eval_faithfulness", "held-out f", "higher"),
    ("metric_circuit", "metric(circuit)", "lower"),
    ("edge_roc_auc", "edge ROC AUC", "higher"),
    ("edge_precision", "edge precision", "higher"),
    ("edge_recall", "edge recall", "higher"),
    ("dependencies_match", "dependency sets match", "higher"),
    ("cpr", "CPR", "higher"),
    ("cmd", "CMD", "lower"),
    ("logit_gap", "logit gap", "lower"),
    ("normalized_logit_gap", "logit gap ÷ empty circuit's", "lower"),
    ("eval_normalized_logit_gap", "held-out logit gap ÷ empty's", "lower"),
    ("circuit_accuracy", "circuit accuracy", "higher"),
    ("eval_circuit_accuracy", "held-out circuit accuracy", "higher"),
    ("full_accuracy", "full accuracy", "higher"),
]
DISCOVERY = [
    ("edges_tested", "edges tested", "lower"),
    ("discovery_seconds", "wall s", "lower"),
    ("forward_examples", "example-forwards", "lower"),
    ("edges_per_second", "edges/s", "higher"),
]
SPARSITY = [
    ("n_edges_kept", "edges kept", "lower"),
    ("edge_sparsity", "edge sparsity", "higher"),
    ("n_nodes_kept", "nodes kept", "lower"),
]
PROFILE = [
    ("train_seconds", "train s", "lower"),
    ("steps_per_second", "steps/s", "higher"),
    ("peak_memory_mib", "peak memory MiB", "lower"),
    ("peak_memory_delta_mib", "peak above start MiB", "lower"),
    ("inference_per_second_batch1", "inference/s b1", "higher"),
    ("inference_per_second_batch1024", "inference/s b1024", "higher"),
    ("n_parameters", "parameters", "lower"),
    ("connection_cost", "connection cost", "lower"),
    ("test_loss", "test loss", "lower"),
    ("test_accuracy", "test accuracy", "higher"),
]
REGIME_ORDER = REGIMES  # rows in the order the regimes add to plain training
BASELINE = BASELINE_REGIME
# The settings that name a discovery; shown whenever a sweep has them.
DISCOVERY_KEYS = ("method", "threshold", "target_f", "ablation", "output")
# Settings that split a row only where they take several values within a task (a grid over lam
# must not be averaged as if its points were seeds): the train grid's, the discover job's own
# seed (its corruption pairing), ACDC's sender order and the package version.
VARYING_KEYS = tuple(k for k in TRAIN_GRID if k not in ("task", "regime", "seed")) + ("discover_seed", "order", "version")
# Settings on which a regime's discovery always pairs with vanilla's (the same discovery).
PAIRED_ALWAYS = DISCOVERY_KEYS + ("discover_seed", "order")
# Yes/no figures: their mean over seeds is a fraction, and a ratio of 0s and 1s is no ratio.
NO_RATIO = {"dependencies_match"}
# Figures every discovery computes: a NaN there is an undefined value (f when ablating every
# edge changes nothing), never a figure the task lacks.
ALWAYS_DEFINED = {"faithfulness", "eval_faithfulness"}
# Figures added by newer versions: when the column is missing but its companion is present, the
# tables say n/a rather than leave the figure out without a word.
NEWER_THAN = {"normalized_logit_gap": "logit_gap", "edges_tested": "forward_examples",
              "eval_faithfulness": "faithfulness", "eval_normalized_logit_gap": "logit_gap",
              "eval_circuit_accuracy": "circuit_accuracy"}


@dataclass
class Estimate:
    mean: float
    half_width: float | None  # None: one value, no interval
    n: int

    def __str__(self) -> str:
        if not self.n or math.isnan(self.mean):
            return "-"
        if self.half_width is None:
            return fmt(self.mean)
        return f"{fmt(self.mean)} ± {fmt(self.half_width)}"

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)


def fmt(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:.4g}" if abs(x) < 100 else f"{x:.0f}"


def estimate(values) -> Estimate:
    """Mean and 95% t-interval half-width over seeds (no interval from a single value)."""
    v = np.asarray([float(x) for x in values if x is not None and not pd.isna(x)], dtype=float)
    if len(v) == 0:
        return Estimate(float("nan"), None, 0)
    if len(v) == 1:
        return Estimate(float(v[0]), None, 1)
    return Estimate(float(v.mean()), t_half_width(v), len(v))


def load_jobs(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, discover rows); discover rows carry the task, regime, seed and train settings
    of the model they read, and their own seed as `discover_seed`."""
    path = Path(sweep_dir) / "jobs.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no jobs.parquet; run the sweep first (`circuitry run SPEC`)")
    df = pd.read_parquet(path)
    if "kind" not in df:  # a sweep stopped before any job finished: a table without rows or columns
        df = pd.DataFrame({"job_id": pd.Series(dtype=str), "kind": pd.Series(dtype=str)})
    for col in ("peak_memory_bytes", "peak_memory_delta_bytes"):  # shown in MiB, not 6.35e+08 bytes
        if col in df:
            df[col.replace("_bytes", "_mib")] = pd.to_numeric(df[col], errors="coerce") / 2 ** 20
    if "status" in df:
        df = df[df["status"].fillna("finished") == "finished"]
    train = df[df["kind"] == "train"].copy()
    discover = df[df["kind"] == "discover"].copy()
    if len(discover):
        if "seed" in discover:
            discover["discover_seed"] = discover["seed"]
        discover["seed"] = discover.get("train_seed")
        models = train.set_index("job_id")
        for col in [c for c in TRAIN_GRID if c in models]:
            mapped = discover["model_id"].map(models[col])
            discover[col] = mapped.fillna(discover[col]) if col in discover else mapped
    for frame in (train, discover):
        for col in [c for c, *_ in QUALITY + DISCOVERY + SPARSITY + PROFILE] + ["tau_found", "tau_above"]:
            if col in frame:
                frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return train, discover


def row_keys(frame: pd.DataFrame) -> list[str]:
    """The columns besides task and regime that name a table row of these (train or discover) rows."""
    keys = [k for k in DISCOVERY_KEYS if k in frame and frame[k].notna().any()]
    for k in VARYING_KEYS:
        if k in frame and len(frame) and frame.groupby("task")[k].nunique(dropna=False).max() > 1:
            keys.append(k)
    return keys


def sorted_regimes(regimes) -> list[str]:
    """The distinct regimes in the report's order (REGIME_ORDER, then any other by name)."""
    return sorted(set(regimes), key=lambda r: (REGIME_ORDER.index(r) if r in REGIME_ORDER else 99, r))


def _same(column: pd.Series, value) -> pd.Series:
    """column == value, with NaN equal to NaN (an unset `output` names the same discovery)."""
    return column.isna() if pd.isna(value) else column == value


def _applies(frame: pd.DataFrame, col: str, task, method=None) -> bool:
    """Whether `col` is a figure of this task (and discovery method): some row of it has a value.
    Where it applies, a NaN is an undefined value and is counted as one."""
    if col not in frame:
        return False
    if col in ALWAYS_DEFINED:
        return True
    rows = frame[_same(frame["task"], task)] if "task" in frame else frame
    if method is not None and "method" in rows:
        rows = rows[_same(rows["method"], method)]
    return bool(rows[col].notna().any())


def _shown_figures(frame: pd.DataFrame, figures) -> list[tuple]:
    """The figures with a value somewhere, and newer figures this (older) sweep lacks (as n/a)."""
    return [f for f in figures if (f[0] in frame and frame[f[0]].notna().any())
            or (f[0] not in frame and NEWER_THAN.get(f[0]) in frame)]


def figure_cell(frame: pd.DataFrame, group: pd.DataFrame, col: str) -> str:
    """mean ± half-width over the defined values, and how many seeds' values are undefined."""
    if col not in group:
        return "n/a"
    values = group[col]
    method = group["method"].iloc[0] if "method" in group else None
    task = group["task"].iloc[0] if "task" in group else None
    undefined = int(values.isna().sum()) if _applies(frame, col, task, method) else 0
    return str(estimate(values)) + (f" ({undefined} undefined)" if undefined else "")


def key_text(value) -> str:
    """A setting in a table's key column: "-" where the row has none (the target_f of a run at a
    threshold, the threshold of one at a target), never "nan"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value)


def _ordered_groups(frame: pd.DataFrame, keys: list[str]):
    groups = frame.groupby(keys, dropna=False, sort=False)
    order = sorted(groups.groups, key=lambda g: tuple(
        (REGIME_ORDER.index(v) if v in REGIME_ORDER else 99, str(v)) for v in (g if isinstance(g, tuple) else (g,))))
    for key in order:
        yield (key if isinstance(key, tuple) else (key,)), groups.get_group(key)


def table(frame: pd.DataFrame, keys: list[str], figures) -> str:
    """A markdown table: one row per group of `keys`, one column per figure present."""
    figures = _shown_figures(frame, figures)
    if frame.empty or not figures:
        return "_no rows_\n"
    head = "| " + " | ".join(keys + ["seeds"] + [label for _, label, _ in figures]) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1 + len(figures))]
    for key, g in _ordered_groups(frame, keys):
        cells = [key_text(k) for k in key] + [str(g["seed"].nunique() if "seed" in g else len(g))]
        cells += [figure_cell(frame, g, col) for col, _, _ in figures]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- ratios against vanilla
@dataclass
class Comparison:
    """One figure's regime ÷ vanilla over the seeds of one cell."""

    cell: tuple  # (task, *keys)
    figure: str
    better: str  # "higher" or "lower"
    ratio: RatioSummary
    unpaired: int  # seeds with a row on one side only (a partial sweep)

    @property
    def regime_better(self) -> str:
        gm = self.ratio.geometric_mean
        if not self.ratio.n or gm == 1:
            return "-"
        return "yes" if (gm > 1) == (self.better == "higher") else "no"


def compare(frame: pd.DataFrame, regime: str, keys: list[str], figures) -> list[Comparison]:
    """`regime` ÷ vanilla for every figure, per cell (task x keys), paired by seed.

    A vanilla model pairs with every model of the same task and seed that agrees with it on the
    settings vanilla's own rows take several values of: the discovery settings, and a train
    setting only where the grid varies it for vanilla too (lam, which vanilla ignores and may
    record as a single value, then pairs every lam with the one vanilla model)."""
    out: list[Comparison] = []
    rows = frame[frame["regime"] == regime]
    baseline = frame[frame["regime"] == BASELINE]
    for cell, g in rows.groupby(["task"] + keys, dropna=False, sort=True):
        cell = cell if isinstance(cell, tuple) else (cell,)
        base = baseline[_same(baseline["task"], cell[0])]
        for k, value in zip(keys, cell[1:]):
            if k in PAIRED_ALWAYS or base[k].nunique(dropna=False) > 1:
                base = base[_same(base[k], value)]
        if base.empty:
            continue
        method = cell[1 + keys.index("method")] if "method" in keys else None
        for col, label, better in figures:
            if col in NO_RATIO or not _applies(frame, col, cell[0], method):
                continue
            x = g.groupby("seed")[col].mean()
            y = base.groupby("seed")[col].mean()
            common = x.index.intersection(y.index)
            out.append(Comparison(cell, label, better, paired_ratio(x[common].to_numpy(), y[common].to_numpy()),
                                  len(x.index.symmetric_difference(y.index))))
    return out


def ratio_text(r: RatioSummary) -> str:
    if r.n == 0:
        return "-"
    if r.n == 1:
        return fmt(r.geometric_mean)
    return f"{fmt(r.geometric_mean)} [{fmt(r.low)}, {fmt(r.high)}]"


def excludes_1_text(r: RatioSummary) -> str:
    if r.n < MIN_N_FOR_CLAIM:
        return f"- (n < {MIN_N_FOR_CLAIM})"
    if r.degenerate:
        return "no (zero width)"
    return "yes" if r.excludes_1 else "no"


def left_out_text(c: Comparison) -> str:
    parts = [f"{c.ratio.n_undefined} undefined"] if c.ratio.n_undefined else []
    parts += [f"{c.unpaired} unpaired"] if c.unpaired else []
    return ", ".join(parts) or "0"


def ratio_table(comparisons: list[Comparison], regime: str, keys: list[str]) -> str:
    if not comparisons:
        return f"_no {regime} and {BASELINE} rows with matching seeds_\n"
    head = ["task"] + keys + ["figure", f"{regime} ÷ {BASELINE}", "n", "left out", "better is",
                              f"{regime} better?", "interval excludes 1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        cells = [str(k) for k in c.cell] + [c.figure, ratio_text(c.ratio), str(c.ratio.n), left_out_text(c),
                                            c.better, c.regime_better, excludes_1_text(c.ratio)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def speed_figure(discover: pd.DataFrame) -> tuple[list[tuple], str]:
    """The figure the discovery-speed comparison is made on, and the sentence that says why."""
    if "edges_tested" in discover and discover["edges_tested"].notna().any():
        return [DISCOVERY[0]], ("Discovery speed is compared on edges tested: the candidate edges ACDC's "
                                "definition tries, which no implementation changes.")
    return [("forward_examples", "example-forwards", "lower")], (
        "Discovery speed is compared on example-forwards: this sweep's rows have no `edges_tested` "
        "(an older sweep), and example-forwards depend on how an implementation batches its trials.")


def ratio_sections(train: pd.DataFrame, discover: pd.DataFrame) -> list[str]:
    speed, speed_note = speed_figure(discover)
    lines = ["## Ratios against vanilla", "",
             "Each regime ÷ vanilla, paired by seed and by every setting that names the job (task, method, "
             "threshold, ablation, ...). A cell is the geometric mean of the paired ratios with a 95% "
             "t-interval on the log ratios, exponentiated; n counts the pairs it rests on. A pair whose ratio "
             "is undefined (a zero, negative, NaN or infinite value on either side) is left out and counted "
             "under `left out`, as are seeds with a row on one side only. `interval excludes 1` needs "
             f"n >= {MIN_N_FOR_CLAIM} and an interval of non-zero width.", "", speed_note]
    if len(discover) and "logit_gap" in discover and "normalized_logit_gap" not in discover:
        lines += ["", "logit gap ÷ empty circuit's: n/a (this sweep's rows have no `normalized_logit_gap`)."]
    circuit_figures = QUALITY + speed + SPARSITY
    regimes = [r for r in sorted_regimes(set(train.get("regime", [])) | set(discover.get("regime", [])))
               if r != BASELINE]
    if not regimes:
        lines += ["", f"_no regime besides {BASELINE} in this sweep_"]
    train_keys = row_keys(train)
    keys = row_keys(discover) if len(discover) else []
    for regime in regimes:
        lines += ["", f"### {regime} ÷ {BASELINE}", "", "Training:", ""]
        lines.append(ratio_table(compare(train, regime, train_keys, PROFILE), regime, train_keys))
        if len(discover):
            lines += ["Circuits:", "", ratio_table(compare(discover, regime, keys, circuit_figures), regime, keys)]
    return lines


# ---------------------------------------------------------------- order sensitivity
# What else names an ACDC circuit of one model besides its sender order.
ORDER_PEERS = ("threshold", "target_f", "ablation", "output", "discover_seed")


def _setting_text(row: pd.Series) -> str:
    sel = f"f>={row['target_f']:g}" if pd.notna(row.get("target_f")) else f"tau={row.get('threshold'):g}"
    parts = [sel, str(row.get("ablation", ""))]
    if pd.notna(row.get("output")):
        parts.append(f"output {int(row['output'])}")
    if pd.notna(row.get("discover_seed")):
        parts.append(f"dseed {int(row['discover_seed'])}")
    return " ".join(parts)


def order_sensitivity(discover: pd.DataFrame) -> list[str]:
    """How ACDC's circuit moves with its sender order (a free choice of the definition): for one
    model per task and regime (its lowest seed, then the first setting) where the sweep ran
    several orders with everything else equal, edges kept and held-out f in each order, the
    edges' max ÷ min and the f range. Empty when no model was run in several orders."""
    if discover.empty or "order" not in discover or "method" not in discover:
        return []
    rows = discover[discover["method"] == "acdc"]
    peers = [k for k in ORDER_PEERS if k in rows]
    found = []
    for key, g in rows.groupby(["model_id"] + peers, dropna=False, sort=False):
        if g["order"].nunique() > 1:
            found.append((g["task"].iloc[0], g["regime"].iloc[0], g["seed"].iloc[0], _setting_text(g.iloc[0]), g))
    if not found:
        return []
    lines = ["## Order sensitivity", "",
             "ACDC tries each receiver's senders in an order its definition leaves free (ascending position, "
             "descending, or a random permutation drawn from the discover seed). One model per task and regime "
             "(its lowest seed), the same discovery settings in every order: edges kept and held-out f per order, "
             "the edges' max ÷ min, and the range of held-out f.", "",
             "| task | regime | seed | discovery | edges kept by order | edges max ÷ min | held-out f by order | "
             "held-out f range |", "|---|---|---|---|---|---|---|---|"]
    chosen = {}
    for task, regime, seed, setting, g in sorted(found, key=lambda x: (x[0], REGIME_ORDER.index(x[1])
                                                                        if x[1] in REGIME_ORDER else 99, x[2], x[3])):
        chosen.setdefault((task, regime), (seed, setting, g))
    for (task, regime), (seed, setting, g) in chosen.items():
        g = g.sort_values("order")
        edges = g["n_edges_kept"].astype(float)
        f = g["eval_faithfulness"].astype(float) if "eval_faithfulness" in g else pd.Series([np.nan] * len(g))
        by_order = lambda v: ", ".join(f"{o} {fmt(x)}" for o, x in zip(g["order"], v))  # noqa: E731
        spread = fmt(edges.max() / edges.min()) if edges.min() > 0 else "-"
        f_range = f"{fmt(f.min())} .. {fmt(f.max())}" if f.notna().any() else "-"
        lines.append(f"| {task} | {regime} | {seed} | {setting} | {by_order(edges)} | {spread} | {by_order(f)} | "
                     f"{f_range} |")
    return lines + [""]
