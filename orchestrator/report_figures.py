"""The report's figures: the networks side by side with a circuit highlighted, edges kept against
tau, the faithfulness curve, discovery time. Each returns the PNG's path, or None when the sweep
has nothing to draw."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from circuitry.orchestrator.report_tables import estimate, sorted_regimes
from circuitry.orchestrator.store import save_png
from circuitry.workers.circuit_file import load_circuit


def _acdc_circuit(acdc: pd.DataFrame):
    """The ACDC circuit a model's drawing shows: the one at the highest target faithfulness (the
    mode the README recommends), else the middle threshold; None when ACDC found none."""
    if "target_f" in acdc and acdc["target_f"].notna().any():
        at_target = acdc[acdc["target_f"].notna()]
        return at_target.sort_values(["target_f", "job_id"]).iloc[-1]
    if "threshold" in acdc:
        acdc = acdc[acdc["threshold"].notna()]
        if len(acdc):
            return acdc.sort_values(["threshold", "job_id"]).iloc[len(acdc) // 2]
    return None


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
        pick = _acdc_circuit(acdc)
        if pick is not None:
            circuit = store.trusted_file(pick["job_id"], "circuit.parquet")  # by id, checked bytes
            if circuit is not None:
                masks = load_circuit(io.BytesIO(circuit), list(ckpt["shape"]))
                setting = f"f>={pick['target_f']:g}" if pd.notna(pick.get("target_f")) else f"tau={pick['threshold']:g}"
                note = f"ACDC {setting}: {int(pick['n_edges_kept'])} edges"
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
    """Mean discovery wall time per task and method, one bar per regime, with 95% intervals over
    seeds; a linear axis unless the bars span more than 100x (then a log axis with plain numbers)."""
    import matplotlib.pyplot as plt

    if discover.empty or "discovery_seconds" not in discover:
        return None
    cells = sorted(discover.groupby(["task", "method"]).groups)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cells) + 1.5), 3.8))
    draw_discovery_time(ax, discover, cells)
    fig.tight_layout()
    path = out / "discovery_time.png"
    save_png(fig, path, dpi=100)
    plt.close(fig)
    return path


def draw_discovery_time(ax, discover: pd.DataFrame, cells: list[tuple]) -> None:
    from matplotlib.ticker import FuncFormatter

    regimes = sorted_regimes(discover["regime"].dropna().unique())
    width = 0.8 / max(1, len(regimes))
    means = []
    for k, regime in enumerate(regimes):
        ests = [estimate(discover[(discover["task"] == t) & (discover["method"] == m)
                                  & (discover["regime"] == regime)]["discovery_seconds"]) for t, m in cells]
        xs = np.arange(len(cells)) + (k - (len(regimes) - 1) / 2) * width
        ys = np.array([e.mean for e in ests])
        errs = np.array([e.half_width or 0.0 for e in ests])
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=regime)
        means += [y for y in ys if np.isfinite(y) and y > 0]
    if means and max(means) / min(means) > 100:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel("discovery wall time (s, log scale)")
    else:
        ax.set_ylabel("discovery wall time (s)")
    ax.set_xticks(np.arange(len(cells)), [f"{t}\n{m}" for t, m in cells], fontsize=7)
    ax.set_title("discovery time: mean over seeds, 95% interval", fontsize=9)
    ax.legend(fontsize=7)
