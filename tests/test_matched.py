"""The report's matched comparison (orchestrator.matched) on a real tiny sweep: each Pareto point is
the mean of its models' rows, the front is the non-dominated points, and every bimt ÷ other cell
is the paired statistic of the seeds' values at the same lam (vanilla at every lam)."""
import math

import numpy as np
import pandas as pd
import pytest

from circuitry.orchestrator.matched import compare_at_lam, matched_rows, matched_sections, pareto_points, reading
from circuitry.orchestrator.report_tables import fmt, load_jobs, ratio_text
from circuitry.orchestrator.stats import paired_ratio, tost
from tests.test_report import table_rows

SPEC = """
[sweep]
name = "m"
[[train]]
task = "independence"
regime = "vanilla"
seed = [0, 1, 2]
steps = 80
width = 6
[[train]]
task = "independence"
regime = ["l1", "bimt"]
lam = [1e-3, 1e-2]
seed = [0, 1, 2]
steps = 80
width = 6
[[discover]]
method = "acdc"
target_f = 0.9
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The spec's jobs run in a plain loop (the worker functions Ray would call)."""
    import torch

    from circuitry.orchestrator.execute import execute_discover, execute_train
    from circuitry.orchestrator.recorder import flat_row, write_parquet
    from circuitry.orchestrator.spec import parse_spec
    from circuitry.orchestrator.store import JobStore

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("matched")
    spec = parse_spec(SPEC)
    store = JobStore(root, fsync=False)
    store.prepare()
    records, ckpts = [], {}
    for j in spec.train_jobs():
        result, ckpts[j.id] = execute_train(j)
        records.append(store.commit(j.id, result))
    for j in spec.discover_jobs():
        records.append(store.commit(j.id, execute_discover(j, ckpts[j.model_id])))
    write_parquet([flat_row(r) for r in records], root / "jobs.parquet")
    return root


def test_pareto_points_are_the_means_of_their_models_and_the_front_is_non_dominated(sweep):
    train, discover = load_jobs(sweep)
    rows = matched_rows(train, discover)
    assert len(rows) == 15 and (rows["faithfulness"] >= 0.9).all()
    points = pareto_points(rows)
    assert len(points) == 1 + 2 * 2  # vanilla is one point, whatever lam it records
    for _, p in points.iterrows():
        g = rows[rows["regime"] == p["regime"]]
        if p["regime"] != "vanilla":
            g = g[g["lam"] == p["lam"]]
        models = train[train["job_id"].isin(g["model_id"])]
        assert p["seeds"] == 3
        assert p["edges"] == pytest.approx(g["n_edges_kept"].mean())
        assert p["test_loss"] == pytest.approx(models["test_loss"].mean())
        others = points.drop(index=p.name)
        dominated = ((others["test_loss"] <= p["test_loss"]) & (others["edges"] <= p["edges"])
                     & ((others["test_loss"] < p["test_loss"]) | (others["edges"] < p["edges"]))).any()
        assert p["pareto"] == (not dominated)
        taus = g["tau_found"].astype(float)
        assert p["tau_found"] == pytest.approx(float(np.exp(np.log(taus[taus > 0]).mean())))
    assert points["pareto"].any()
    # a seed whose search ended at tau = 0 does not make the point's tau 0
    first = rows.index[rows["regime"] == "vanilla"][0]
    zeroed = rows.assign(tau_found=rows["tau_found"].where(rows.index != first, 0.0))
    vanilla = pareto_points(zeroed).set_index("regime").loc["vanilla"]
    assert vanilla["tau_found"] > 0


def test_bimt_cells_are_paired_ratios_at_the_same_lam_with_tost(sweep):
    train, discover = load_jobs(sweep)
    rows = matched_rows(train, discover)
    results = compare_at_lam(rows, "l1") + compare_at_lam(rows, "vanilla")
    assert {(c["vs"], c["lam"]) for c in results} == {(o, lam) for o in ("l1", "vanilla") for lam in (1e-3, 1e-2)}
    for c in results:
        col = {"edges at target f": "n_edges_kept", "held-out f": "eval_faithfulness", "test loss": "test_loss",
               "edges tested": "edges_tested"}[c["figure"]]
        mine = rows[(rows["regime"] == "bimt") & (rows["lam"] == c["lam"])].set_index("seed")[col].sort_index()
        base = rows[rows["regime"] == c["vs"]]
        if c["vs"] != "vanilla":
            base = base[base["lam"] == c["lam"]]
        theirs = base.set_index("seed")[col].sort_index()
        want = paired_ratio(mine.to_numpy(), theirs.to_numpy())
        assert c["ratio"].n == 3 and c["ratio"].geometric_mean == pytest.approx(want.geometric_mean)
        assert c["tost"].p_value == pytest.approx(tost(mine.to_numpy(), theirs.to_numpy()).p_value, nan_ok=True)


def test_readings_claim_only_what_the_statistics_allow():
    x = np.array([1.0, 1.1, 0.9, 1.05])
    assert reading(paired_ratio(x[:2], x[:2]), tost(x[:2], x[:2]), "lower") == "no claim (n = 2)"
    lower = paired_ratio(x * 0.5, x)  # identical ratios: no spread, no claim of either kind
    assert reading(lower, tost(x * 0.5, x), "lower") == "not distinguishable with n = 4"
    y = x * np.array([0.5, 0.55, 0.45, 0.5])
    assert reading(paired_ratio(y, x), tost(y, x), "lower") == "bimt better"
    assert reading(paired_ratio(y, x), tost(y, x), "higher") == "bimt worse"
    z = x * np.array([1.01, 0.99, 1.0, 1.02])
    assert reading(paired_ratio(z, x), tost(z, x), "lower") == "the same within ±25% (TOST)"


def test_the_report_opens_with_the_matched_section_and_its_figure(sweep):
    from circuitry.orchestrator.report import write_report

    report, pictures = write_report(sweep)
    text = report.read_text()
    assert text.index("## At matched faithfulness") < text.index("## Ratios against vanilla")
    section = text.split("### independence, f >= 0.9", 1)[1].split("\n## ", 1)[0]
    train, discover = load_jobs(sweep)
    points = pareto_points(matched_rows(train, discover))
    shown = [r for r in table_rows(section) if "on the front" in r]
    assert [(r["regime"], r["lam"]) for r in shown] == [
        (p["regime"], "-" if math.isnan(p["lam"]) else fmt(p["lam"])) for _, p in points.iterrows()]
    cells = [r for r in table_rows(section) if r.get("comparison") == "bimt ÷ l1" and r["figure"] == "edges at target f"]
    assert len(cells) == 2 and all(c["n"] == "3" for c in cells)
    c = compare_at_lam(matched_rows(train, discover), "l1")[0]
    assert cells[0]["ratio [95% CI]"] == ratio_text(c["ratio"])
    assert any(p.name == "pareto_independence_f0.9.png" and p.is_file() for p in pictures)


def test_no_target_f_rows_no_section(tmp_path):
    empty = pd.DataFrame({"job_id": [], "regime": []})
    assert matched_sections(empty, empty, tmp_path) == ([], [])


def test_circuits_that_miss_the_target_stay_out_of_points_and_pairs(sweep):
    train, discover = load_jobs(sweep)
    rows = matched_rows(train, discover)
    assert rows["reached"].all()
    missed = rows.index[(rows["regime"] == "bimt") & (rows["lam"] == 1e-3) & (rows["seed"] == 0)]
    rows.loc[missed, "reached"] = False  # as a dead net's would be: f undefined even for the full circuit
    points = pareto_points(rows).set_index(["regime", "lam"])
    point = points.loc[("bimt", 1e-3)]
    kept = rows[(rows["regime"] == "bimt") & (rows["lam"] == 1e-3) & rows["reached"]]
    assert (point["seeds"], point["reached"]) == (3, 2)
    assert point["edges"] == pytest.approx(kept["n_edges_kept"].mean())
    cells = [c for c in compare_at_lam(rows, "l1") if c["lam"] == 1e-3]
    assert cells and all(c["ratio"].n == 2 for c in cells)
