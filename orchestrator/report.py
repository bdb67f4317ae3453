"""`circuitry report SWEEP`: the seed paper's comparison, from a finished (or partial) sweep.

Reads SWEEP/jobs.parquet (one row per finished job) and writes SWEEP/report.md plus PNG figures:
the matched comparison first (orchestrator.matched), then the tables (orchestrator.report_tables)
and the figures (orchestrator.report_figures).
"""
from __future__ import annotations

from pathlib import Path

from circuitry.orchestrator.matched import matched_sections
from circuitry.orchestrator.report_figures import (figure_discovery_time, figure_edges_vs_threshold,
                                                   figure_faithfulness_curve, figure_networks)
from circuitry.orchestrator.report_tables import (DISCOVERY, PROFILE, QUALITY, SPARSITY, load_jobs, order_sensitivity,
                                                  ratio_sections, row_keys, table)
from circuitry.orchestrator.spec import SpecError, load_spec
from circuitry.orchestrator.store import write_atomic


def missing_jobs(sweep_dir: Path, done: set[str]) -> list[str] | str:
    """Labels of the spec's jobs without a finished row; or why they cannot be listed (a sweep
    folder without spec.toml, or one whose spec.toml this version cannot read)."""
    spec_path = Path(sweep_dir) / "spec.toml"
    if not spec_path.is_file():
        return "the sweep folder has no spec.toml"
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
