"""`circuitry report SWEEP`: the seed paper's comparison, from a finished (or partial) sweep.

Reads SWEEP/jobs.parquet (one row per finished job) and writes SWEEP/report.md plus PNG figures.
Rows are grouped by task x regime (x discovery method and threshold); each cell is the mean over
seeds with a 95% t-interval. For every figure, BIMT / vanilla is computed per seed (same seed =
same data and initialisation) and summarised the same way; `excludes 1` marks ratios whose
interval lies wholly on one side of 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

# (column, label, better): better is "higher" or "lower"
QUALITY = [
    ("faithfulness", "faithfulness f", "higher"),
    ("metric_circuit", "metric(circuit)", "lower"),
    ("edge_roc_auc", "edge ROC AUC", "higher"),
    ("edge_precision", "edge precision", "higher"),
    ("edge_recall", "edge recall", "higher"),
    ("dependencies_match", "dependency sets match", "higher"),
    ("cpr", "CPR", "higher"),
    ("cmd", "CMD", "lower"),
    ("logit_gap", "logit gap", "lower"),
    ("circuit_accuracy", "circuit accuracy", "higher"),
    ("full_accuracy", "full accuracy", "higher"),
]
DISCOVERY = [
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
REGIME_ORDER = ["vanilla", "l1", "local", "swap", "bimt"]


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
    sem = float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return Estimate(float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1)) * sem, len(v))


def load_jobs(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, discover rows); discover rows carry task/regime/seed of the model they read."""
    path = Path(sweep_dir) / "jobs.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no jobs.parquet; run the sweep first (`circuitry run SPEC`)")
    df = pd.read_parquet(path)
    if "status" in df:
        df = df[df["status"].fillna("finished") == "finished"]
    train = df[df["kind"] == "train"].copy()
    discover = df[df["kind"] == "discover"].copy()
    if len(discover):
        models = train.set_index("job_id")[["task", "regime", "seed"]]
        for col in ("task", "regime", "seed"):
            discover[col] = discover["model_id"].map(models[col]).fillna(discover.get(col))
    for frame in (train, discover):
        for col, *_ in QUALITY + DISCOVERY + SPARSITY + PROFILE:
            if col in frame:
                frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return train, discover


def discovery_keys(discover: pd.DataFrame) -> list[str]:
    return [k for k in ("method", "threshold", "ablation", "output") if k in discover and discover[k].notna().any()]


def _sorted_regimes(regimes) -> list[str]:
    return sorted(set(regimes), key=lambda r: (REGIME_ORDER.index(r) if r in REGIME_ORDER else 99, r))


def table(frame: pd.DataFrame, keys: list[str], figures) -> str:
    """A markdown table: one row per group of `keys`, one column per figure present."""
    figures = [f for f in figures if f[0] in frame and frame[f[0]].notna().any()]
    if frame.empty or not figures:
        return "_no rows_\n"
    head = "| " + " | ".join(keys + ["seeds"] + [label for _, label, _ in figures]) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1 + len(figures))]
    groups = frame.groupby(keys, dropna=False, sort=False)
    order = sorted(groups.groups, key=lambda g: tuple(
        (REGIME_ORDER.index(v) if v in REGIME_ORDER else 99, str(v)) for v in (g if isinstance(g, tuple) else (g,))))
    for key in order:
        g = groups.get_group(key)
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key] + [str(g["seed"].nunique() if "seed" in g else len(g))]
        cells += [str(estimate(g[col])) for col, _, _ in figures]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ratios(frame: pd.DataFrame, keys: list[str], figures, pair_on: list[str]) -> list[dict]:
    """BIMT / vanilla per seed-matched pair, summarised per group of `keys` (without regime)."""
    out = []
    if not {"bimt", "vanilla"} <= set(frame.get("regime", pd.Series(dtype=str)).unique()):
        return out
    for key, g in frame.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        b = g[g["regime"] == "bimt"].set_index(pair_on)
        v = g[g["regime"] == "vanilla"].set_index(pair_on)
        common = b.index.intersection(v.index)
        for col, label, better in figures:
            if col not in g or common.empty:
                continue
            r = (b.loc[common, col].astype(float) / v.loc[common, col].astype(float)).replace([np.inf, -np.inf], np.nan)
            est = estimate(r.dropna())
            if est.n == 0:
                continue
            excludes = est.half_width is not None and (est.low > 1 or est.high < 1)
            wins = (est.mean > 1) == (better == "higher") and est.mean != 1
            out.append({"group": " / ".join(str(k) for k in key), "figure": label, "ratio": est,
                        "better": better, "bimt_better": wins, "excludes_1": excludes})
    return out


def ratio_table(rows: list[dict]) -> str:
    if not rows:
        return "_needs both bimt and vanilla rows with matching seeds_\n"
    lines = ["| group | figure | BIMT ÷ vanilla | better is | BIMT better? | interval excludes 1 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['group']} | {r['figure']} | {r['ratio']} | {r['better']} | "
                     f"{'yes' if r['bimt_better'] else 'no'} | {'yes' if r['excludes_1'] else ('-' if r['ratio'].half_width is None else 'no')} |")
    return "\n".join(lines) + "\n"


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

    from workers.draw import draw_network_on

    rows = train[train["task"] == task]
    if rows.empty:
        return None
    seed = rows["seed"].min()
    rows = rows[rows["seed"] == seed]
    regimes = _sorted_regimes(rows["regime"])
    fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 5.5), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        job = rows[rows["regime"] == regime].iloc[0]
        ckpt = torch.load(sweep_dir / "jobs" / job["job_id"] / "model.pt", weights_only=True)
        acdc = discover[(discover["model_id"] == job["job_id"]) & (discover.get("method") == "acdc")]
        masks, note = None, "no ACDC circuit"
        if len(acdc):
            pick = acdc.sort_values("threshold").iloc[len(acdc) // 2]
            path = sweep_dir / "jobs" / pick["job_id"] / "circuit.parquet"
            if path.is_file():
                masks = _masks_from_circuit(path, ckpt["shape"])
                note = f"ACDC tau={pick['threshold']:g}: {int(pick['n_edges_kept'])} edges"
        draw_network_on(ax, ckpt, masks, f"{regime} (seed {seed})\n{note}")
    fig.tight_layout()
    path = out / f"networks_{task}.png"
    fig.savefig(path, dpi=90)
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figure_edges_vs_threshold(task: str, discover: pd.DataFrame, out: Path) -> Path | None:
    rows = discover[(discover["task"] == task) & (discover.get("method") == "acdc")]
    if rows.empty or rows["threshold"].nunique() < 2:
        return None
    series = {}
    for regime in _sorted_regimes(rows["regime"]):
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
    for regime in _sorted_regimes(rows["regime"]):
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
    g = g[[r for r in _sorted_regimes(g.columns)]]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(g)), 3.5))
    g.plot.bar(ax=ax, logy=True)
    ax.set_ylabel("discovery wall time (s)")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "discovery_time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the report
def missing_jobs(sweep_dir: Path, done: set[str]) -> list[str] | None:
    """Labels of the spec's jobs without a finished row, when the sweep kept its spec."""
    spec_path = Path(sweep_dir) / "spec.toml"
    if not spec_path.is_file():
        return None
    from orchestrator.spec import load_spec

    try:
        spec = load_spec(spec_path, root=Path(sweep_dir).parent)
    except Exception:
        return None
    return [j.label for j in spec.jobs if j.id not in done]


def write_report(sweep_dir: str | Path) -> tuple[Path, list[Path]]:
    sweep_dir = Path(sweep_dir)
    train, discover = load_jobs(sweep_dir)
    keys = discovery_keys(discover)
    pictures: list[Path] = []
    lines = [f"# circuitry report: {sweep_dir.name}", ""]
    lines.append(f"{len(train)} trained models, {len(discover)} circuits; cells are mean ± 95% CI half-width over seeds "
                 "(no interval with one seed).")
    missing = missing_jobs(sweep_dir, set(train["job_id"]) | set(discover["job_id"]))
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        lines += ["", f"**Partial sweep**: {len(missing)} jobs have no result yet: {shown}."]
    elif missing is None:
        lines += ["", "(The sweep folder has no spec.toml, so missing jobs cannot be listed.)"]

    lines += ["", "## BIMT ÷ vanilla", ""]
    ratio_rows = ratios(train, ["task"], PROFILE, ["seed"])
    if len(discover):
        ratio_rows += ratios(discover, ["task"] + keys, QUALITY + DISCOVERY + SPARSITY, ["seed"])
    lines.append(ratio_table(ratio_rows))
    sections = [
        ("Circuit quality", discover, ["task", "regime"] + keys, QUALITY),
        ("Discovery cost", discover, ["task", "regime"] + keys, DISCOVERY),
        ("Sparsity", discover, ["task", "regime"] + keys, SPARSITY),
        ("Computational profile (training)", train, ["task", "regime"], PROFILE),
    ]
    for title, frame, group, figures in sections:
        lines += [f"## {title}", "", table(frame, group, figures) if len(frame) else "_no rows_\n"]

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
    report.write_text("\n".join(lines) + "\n")
    return report, pictures
