"""`circuitry report SWEEP`: the seed paper's comparison, from a finished (or partial) sweep.

Reads SWEEP/jobs.parquet (one row per finished job) and writes SWEEP/report.md plus PNG figures.
Tables: one row per task x regime x the settings that name a discovery (method, threshold,
ablation, ...); each cell is the arithmetic mean over seeds with a 95% t-interval, and says how many
seeds' values are undefined (NaN, e.g. f of a collapsed model). Ratios: every regime against
vanilla, paired by seed and by everything else that names the job, summarised as a geometric
mean with a t-interval on the log ratios (orchestrator.stats).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from circuitry.orchestrator.spec import TRAIN_GRID
from circuitry.orchestrator.stats import MIN_N_FOR_CLAIM, RatioSummary, paired_ratio, t_half_width
from circuitry.orchestrator.store import save_png, write_atomic
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
    ("peak_memory_bytes", "peak memory B", "lower"),
    ("peak_memory_delta_bytes", "peak above start B", "lower"),
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
        cells = [str(k) for k in key] + [str(g["seed"].nunique() if "seed" in g else len(g))]
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


# ---------------------------------------------------------------- figures
def _masks_from_circuit(path: Path, shape: list[int]):
    import pyarrow.parquet as pq
    import torch

    t = pq.read_table(path, columns=["src_layer", "src_pos", "dst_pos", "in_circuit"]).to_pandas()
    masks = [torch.zeros(shape[l + 1], shape[l], dtype=torch.bool) for l in range(len(shape) - 1)]
    kept = t[t["in_circuit"]]
    for l, g in kept.groupby("src_layer"):
        masks[int(l)][torch.as_tensor(g["dst_pos"].to_numpy().copy()), torch.as_tensor(g["src_pos"].to_numpy().copy())] = True
    return masks


def figure_networks(sweep_dir: Path, task: str, train: pd.DataFrame, discover: pd.DataFrame, out: Path) -> Path | None:
    """One seed per regime, side by side, with an ACDC circuit highlighted where there is one."""
    import matplotlib.pyplot as plt
    import torch

    from circuitry.orchestrator.store import JobStore
    from circuitry.workers.draw import draw_network_on

    store = JobStore(sweep_dir)
    rows = train[train["task"] == task]
    if rows.empty:
        return None
    seed = rows["seed"].min()
    rows = rows[rows["seed"] == seed]
    regimes = sorted_regimes(rows["regime"])
    fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 5.5), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        job = rows[rows["regime"] == regime].iloc[0]
        blob = store.trusted_file(job["job_id"], "model.pt")  # by id, checked bytes; never a path from a file
        if blob is None:
            ax.set_axis_off()
            continue
        ckpt = torch.load(io.BytesIO(blob), weights_only=True)
        acdc = discover[(discover["model_id"] == job["job_id"]) & (discover.get("method") == "acdc")]
        masks, note = None, "no ACDC circuit"
        if "threshold" in acdc:  # circuits at a threshold; those at a target faithfulness have none
            acdc = acdc[acdc["threshold"].notna()]
        if len(acdc):
            pick = acdc.sort_values("threshold").iloc[len(acdc) // 2]
            circuit = store.trusted_file(pick["job_id"], "circuit.parquet")  # by id, checked bytes
            if circuit is not None:
                masks = _masks_from_circuit(io.BytesIO(circuit), ckpt["shape"])
                note = f"ACDC tau={pick['threshold']:g}: {int(pick['n_edges_kept'])} edges"
        draw_network_on(ax, ckpt, masks, f"{regime} (seed {seed})\n{note}")
    fig.tight_layout()
    path = out / f"networks_{task}.png"
    save_png(fig, path, dpi=90)
    plt.close(fig)
    return path


def _line_figure(path: Path, title: str, xlabel: str, ylabel: str, series: dict, logx: bool = True) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (x, y, err) in series.items():
        ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    plt.close(fig)
    return path


def figure_edges_vs_threshold(task: str, discover: pd.DataFrame, out: Path) -> Path | None:
    rows = discover[(discover["task"] == task) & (discover.get("method") == "acdc")]
    if rows.empty or rows["threshold"].nunique() < 2:
        return None
    series = {}
    for regime in sorted_regimes(rows["regime"]):
        g = rows[rows["regime"] == regime].groupby("threshold")["n_edges_kept"]
        est = {t: estimate(v) for t, v in g}
        xs = sorted(est)
        series[regime] = (xs, [est[t].mean for t in xs], [est[t].half_width or 0 for t in xs])
    return _line_figure(out / f"edges_vs_threshold_{task}.png", f"{task}: ACDC edges kept", "tau", "edges kept", series)


def figure_faithfulness_curve(task: str, discover: pd.DataFrame, out: Path) -> Path | None:
    import json

    rows = discover[(discover["task"] == task) & discover.get("curve_faithfulness", pd.Series(dtype=object)).notna()]
    if rows.empty:
        return None
    method = "exact" if (rows["method"] == "exact").any() else rows["method"].iloc[0]
    rows = rows[rows["method"] == method]
    series = {}
    for regime in sorted_regimes(rows["regime"]):
        g = rows[rows["regime"] == regime]
        xs = json.loads(g["curve_fractions"].iloc[0])
        curves = np.array([json.loads(c) for c in g["curve_faithfulness"]], dtype=float)
        ests = [estimate(curves[:, i]) for i in range(curves.shape[1])]
        series[regime] = ([100 * x for x in xs], [e.mean for e in ests], [e.half_width or 0 for e in ests])
    return _line_figure(out / f"faithfulness_curve_{task}.png", f"{task}: faithfulness of top edges ({method})",
                        "edges kept (%)", "faithfulness f", series)


def figure_discovery_time(discover: pd.DataFrame, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    if discover.empty or "discovery_seconds" not in discover:
        return None
    g = discover.groupby(["task", "method", "regime"])["discovery_seconds"].mean().unstack("regime")
    g = g[[r for r in sorted_regimes(g.columns)]]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(g)), 3.5))
    g.plot.bar(ax=ax, logy=True)
    ax.set_ylabel("discovery wall time (s)")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "discovery_time.png"
    save_png(fig, path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the report
def missing_jobs(sweep_dir: Path, done: set[str]) -> list[str] | str:
    """Labels of the spec's jobs without a finished row; or why they cannot be listed (a sweep
    folder without spec.toml, or one whose spec.toml this version cannot read)."""
    spec_path = Path(sweep_dir) / "spec.toml"
    if not spec_path.is_file():
        return "the sweep folder has no spec.toml"
    from circuitry.orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path, root=Path(sweep_dir).parent)
    except SpecError as e:
        return f"its spec.toml does not parse ({e})"
    return [j.label for j in spec.jobs if j.id not in done]


def write_report(sweep_dir: str | Path) -> tuple[Path, list[Path]]:
    sweep_dir = Path(sweep_dir)
    train, discover = load_jobs(sweep_dir)
    keys = row_keys(discover)
    lines = [f"# circuitry report: {sweep_dir.name}", ""]
    lines.append(f"{len(train)} trained models, {len(discover)} circuits; cells are mean ± 95% CI half-width over seeds "
                 "(no interval with one seed); `(k undefined)`: k seeds' values are NaN (e.g. f when ablating every "
                 "edge changes the metric by round-off only) and the mean is over the others.")
    missing = missing_jobs(sweep_dir, set(train["job_id"]) | set(discover["job_id"]))
    if isinstance(missing, str):
        lines += ["", f"(Missing jobs cannot be listed: {missing}.)"]
    elif missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        lines += ["", f"**Partial sweep**: {len(missing)} jobs have no result yet: {shown}."]

    from circuitry.orchestrator.matched import matched_sections  # it builds on this module's tables

    matched, pictures = matched_sections(train, discover, sweep_dir)  # the main comparison, first
    lines += [""] + matched + ([""] if matched else []) + ratio_sections(train, discover) + [""]
    sections = [
        ("Circuit quality", discover, ["task", "regime"] + keys, QUALITY),
        ("Discovery cost", discover, ["task", "regime"] + keys, DISCOVERY),
        ("Sparsity", discover, ["task", "regime"] + keys, SPARSITY),
        ("Computational profile (training)", train, ["task", "regime"] + row_keys(train), PROFILE),
    ]
    for title, frame, group, figures in sections:
        lines += [f"## {title}", "", table(frame, group, figures) if len(frame) else "_no rows_\n"]
    lines += order_sensitivity(discover)

    lines += ["## Figures", ""]
    for task in sorted(set(train.get("task", [])) | set(discover.get("task", []))):
        for make in (lambda: figure_networks(sweep_dir, task, train, discover, sweep_dir),
                     lambda: figure_edges_vs_threshold(task, discover, sweep_dir),
                     lambda: figure_faithfulness_curve(task, discover, sweep_dir)):
            path = make()
            if path:
                pictures.append(path)
    time_fig = figure_discovery_time(discover, sweep_dir)
    if time_fig:
        pictures.append(time_fig)
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    report = sweep_dir / "report.md"
    write_atomic(report, ("\n".join(lines) + "\n").encode(), fsync=False)  # never through a planted link
    return report, pictures
