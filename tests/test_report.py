"""`circuitry report`: on a real tiny sweep, the tables' numbers are the Parquet rows they summarise;
on hand-made rows, the ratio cells are the paired statistics (orchestrator.stats), with the
pathological pairs counted, never dropped."""
import json
import math
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from circuitry.orchestrator.cli import main
from circuitry.orchestrator.recorder import write_parquet
from circuitry.orchestrator.report_tables import QUALITY, estimate, fmt, load_jobs, ratio_sections, row_keys, table
from circuitry.orchestrator.scheduler import Scheduler
from circuitry.orchestrator.spec import parse_spec

SPEC = """
[sweep]
name = "rep"
root = "{root}"
metrics_port = -1

[train]
task = ["independence", "two_moons"]
regime = ["vanilla", "bimt"]
seed = {seeds}
steps = 400
width = 8
swap_every = 100
log_every = 100

[discover]
method = ["acdc", "exact"]
threshold = [0.003, 0.03]
"""


def cell(report: str, section: str, first_cells: list[str], column: str) -> str:
    """The text of one cell of a markdown table in a report section."""
    body = report.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines() if line.startswith("|")]
    header = rows[0]
    for row in rows[2:]:
        if row[: len(first_cells)] == first_cells:
            return row[header.index(column)]
    raise AssertionError(f"no row {first_cells} in {section}")


def expected(values) -> str:
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return f"{fmt(v.mean())} ± {fmt(half)}"


def table_rows(text: str) -> list[dict]:
    """Every row of every markdown table in `text`, as {header: cell}."""
    out, header = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = cells
        elif header and not line.startswith("|---"):
            out.append(dict(zip(header, cells)))
    return out


def ratio_row(text: str, regime: str, part: str, figure: str, **match) -> dict:
    """The row of `figure` in the `part` ("Training:" / "Circuits:") table of `regime` ÷ vanilla."""
    body = text.split(f"### {regime} ÷ vanilla\n", 1)[1].split("\n### ", 1)[0]
    body = body.split(part, 1)[1].split("\n\n", 2)[1]
    rows = [r for r in table_rows(body) if r["figure"] == figure and all(r[k] == v for k, v in match.items())]
    assert len(rows) == 1, (figure, match, body)
    return rows[0]


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    spec = parse_spec(SPEC.format(root=root, seeds="[0, 1]"))
    out = Scheduler(spec, echo=lambda m: None, progress=False).run()
    assert out.failed == 0 and out.finished == len(spec.jobs) == 4 * 2 + 4 * 2 * 2 * 2
    return spec


@pytest.mark.slow
def test_report_tables_are_the_parquet_rows(sweep, capsys):
    sweep_dir = sweep.sweep_dir
    main(["report", str(sweep_dir)])  # returns normally on success
    assert "wrote" in capsys.readouterr().out
    report = (sweep_dir / "report.md").read_text()
    jobs = pd.read_parquet(sweep_dir / "jobs.parquet")
    train = jobs[jobs["kind"] == "train"]
    rows = train[(train["task"] == "independence") & (train["regime"] == "bimt")]
    assert cell(report, "Computational profile (training)", ["independence", "bimt"], "test loss") == expected(rows["test_loss"])
    assert cell(report, "Computational profile (training)", ["two_moons", "vanilla"], "seeds") == "2"

    # discover rows: task/regime/seed come from the model they read
    disc = jobs[jobs["kind"] == "discover"].copy()
    models = train.set_index("job_id")
    disc["regime"] = disc["model_id"].map(models["regime"])
    disc["model_task"] = disc["model_id"].map(models["task"])
    picked = disc[(disc["model_task"] == "two_moons") & (disc["regime"] == "vanilla") & (disc["method"] == "acdc")
                  & (disc["threshold"] == 0.03)]
    assert len(picked) == 2
    key = ["two_moons", "vanilla", "acdc", "0.03", "resample"]
    assert cell(report, "Sparsity", key, "edges kept") == expected(picked["n_edges_kept"])
    assert cell(report, "Circuit quality", key, "logit gap") == expected(picked["logit_gap"])

    # BIMT / vanilla, paired by seed: geometric mean and t-interval of the log ratios
    b = rows.set_index("seed")["connection_cost"]
    v = train[(train["task"] == "independence") & (train["regime"] == "vanilla")].set_index("seed")["connection_cost"]
    logs = np.log(b / v.loc[b.index]).to_numpy()
    half = stats.t.ppf(0.975, 1) * logs.std(ddof=1) / math.sqrt(2)
    row = ratio_row(report, "bimt", "Training:", "connection cost", task="independence")
    gm = math.exp(logs.mean())
    assert row["bimt ÷ vanilla"] == f"{fmt(gm)} [{fmt(gm * math.exp(-half))}, {fmt(gm * math.exp(half))}]"
    assert (row["n"], row["left out"], row["interval excludes 1"]) == ("2", "0", "- (n < 3)")
    # discovery speed on edges tested when the rows have it, else example-forwards with a note
    speed = "edges tested" if "edges_tested" in jobs else "example-forwards"
    assert ratio_row(report, "bimt", "Circuits:", speed, task="two_moons", method="acdc", threshold="0.03")["n"] == "2"

    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"networks_independence.png", "edges_vs_threshold_two_moons.png", "faithfulness_curve_independence.png",
            "discovery_time.png"} <= set(pictures)
    for name in pictures:
        image = mpimg.imread(sweep_dir / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01, name

    # the report is an artifact of the sweep's parent MLflow run
    from mlflow.tracking import MlflowClient

    info = json.loads((sweep_dir / "sweep.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    exp = client.get_experiment_by_name("rep")
    parent = client.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'sweep'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.md" in logged and "report/discovery_time.png" in logged


@pytest.mark.slow
def test_report_on_a_partial_sweep_says_what_is_missing(sweep, capsys):
    sweep_dir = sweep.sweep_dir
    spec_file = sweep_dir / "spec.toml"
    spec_file.write_text(spec_file.read_text().replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    main(["report", str(sweep_dir), "--no-mlflow"])
    report = (sweep_dir / "report.md").read_text()
    assert "**Partial sweep**: 20 jobs have no result yet" in report
    assert "train/independence/vanilla/seed2" in report


def test_one_seed_gives_values_without_intervals():
    frame = pd.DataFrame({"task": ["a", "a"], "regime": ["bimt", "vanilla"], "seed": [0, 0], "test_loss": [0.5, 0.25]})
    text = table(frame, ["task", "regime"], [("test_loss", "test loss", "lower")])
    assert "| a | bimt | 1 | 0.5 |" in text and "±" not in text
    assert str(estimate([1.0, 3.0])) == f"2 ± {fmt(stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))}"


def test_report_without_a_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "jobs.parquet" in err


# ---------------------------------------------------------------- ratios on hand-made rows
def hand_made_sweep(tmp_path, edges_tested=True, normalized_gap=True):
    """One task, vanilla / l1 / bimt, seeds 0-3 (l1: 0-1), one ACDC discovery per model, numbers
    chosen so that every pathological pair of the reviewer's list appears:
    - f: vanilla seed 0 has f = 0 (bimt/vanilla is inf), bimt seed 3 has f undefined (NaN);
    - metric(circuit): vanilla seed 1 has 1e-17 (a ratio of 1e16);
    - edges kept: bimt exactly half of vanilla for every seed (a zero-width interval);
    - l1 has two seeds (n = 2, two vanilla seeds unpaired)."""
    f = {"vanilla": [0.0, 0.5, 0.6, 0.4], "l1": [0.8, 0.9], "bimt": [0.9, 0.95, 1.0, math.nan]}
    metric = {"vanilla": [0.1, 1e-17, 0.1, 0.1], "l1": [0.1, 0.1], "bimt": [0.1, 0.1, 0.1, 0.1]}
    tested = {"vanilla": [100, 110, 90, 100], "l1": [60, 50], "bimt": [40, 45, 41, 38]}
    rows = []
    for regime in ("vanilla", "l1", "bimt"):
        for seed in range(len(f[regime])):
            tid = f"train-{regime}-{seed}"
            rows.append({"job_id": tid, "kind": "train", "status": "finished", "task": "moons", "regime": regime,
                         "seed": seed, "lam": 1e-3, "steps": 10, "connection_cost": {"vanilla": 10.0, "l1": 5.0, "bimt": 2.0}[regime] + seed})
            row = {"job_id": "d" + tid, "kind": "discover", "status": "finished", "model_id": tid, "method": "acdc",
                   "threshold": 0.01, "ablation": "resample", "output": None, "seed": 0, "task": "moons",
                   "regime": regime, "train_seed": seed, "faithfulness": f[regime][seed],
                   "metric_circuit": metric[regime][seed], "n_edges_kept": 20 if regime == "vanilla" else 10,
                   "forward_examples": 1000 * (seed + 1), "logit_gap": 0.5 if regime == "vanilla" else 0.25}
            if edges_tested:
                row["edges_tested"] = tested[regime][seed]
            if normalized_gap:
                row["normalized_logit_gap"] = {"vanilla": 0.5, "l1": 0.2, "bimt": 0.1}[regime] * (1 + 0.1 * seed)
            rows.append(row)
    write_parquet(rows, tmp_path / "jobs.parquet")
    return load_jobs(tmp_path)


def gm_text(x, y) -> str:
    """Geometric mean [95% t-interval], computed here independently of orchestrator.stats."""
    logs = np.log(np.asarray(x, dtype=float)) - np.log(np.asarray(y, dtype=float))
    low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    return f"{fmt(math.exp(logs.mean()))} [{fmt(math.exp(low))}, {fmt(math.exp(high))}]"


def test_ratio_cells_count_undefined_pairs_and_say_their_n(tmp_path):
    train, discover = hand_made_sweep(tmp_path)
    text = "\n".join(ratio_sections(train, discover))
    on = dict(task="moons", method="acdc", threshold="0.01", ablation="resample")
    # f: seed 0's ratio is inf (vanilla f = 0), seed 3's is NaN (bimt f undefined): both counted
    row = ratio_row(text, "bimt", "Circuits:", "faithfulness f", **on)
    assert row["bimt ÷ vanilla"] == gm_text([0.95, 1.0], [0.5, 0.6])
    assert (row["n"], row["left out"], row["interval excludes 1"]) == ("2", "2 undefined", "- (n < 3)")
    # a 1e-17 denominator is a huge ratio in one pair: the interval is wide and excludes nothing
    row = ratio_row(text, "bimt", "Circuits:", "metric(circuit)", **on)
    assert row["bimt ÷ vanilla"] == gm_text([0.1] * 4, [0.1, 1e-17, 0.1, 0.1])
    assert (row["n"], row["interval excludes 1"]) == ("4", "no")
    # the same ratio for every seed: a zero-width interval does not exclude 1
    row = ratio_row(text, "bimt", "Circuits:", "edges kept", **on)
    assert (row["bimt ÷ vanilla"], row["interval excludes 1"], row["bimt better?"]) == ("0.5 [0.5, 0.5]", "no (zero width)", "yes")
    # a real difference on n = 4 does
    row = ratio_row(text, "bimt", "Circuits:", "edges tested", **on)
    assert row["bimt ÷ vanilla"] == gm_text([40, 45, 41, 38], [100, 110, 90, 100])
    assert (row["n"], row["interval excludes 1"], row["bimt better?"]) == ("4", "yes", "yes")
    row = ratio_row(text, "bimt", "Circuits:", "logit gap ÷ empty circuit's", **on)
    assert row["bimt ÷ vanilla"] == "0.2 [0.2, 0.2]" and row["n"] == "4"
    # every regime against vanilla: l1 has two seeds, so two vanilla seeds are unpaired
    row = ratio_row(text, "l1", "Circuits:", "edges tested", **on)
    assert row["l1 ÷ vanilla"] == gm_text([60, 50], [100, 110])
    assert (row["n"], row["left out"], row["interval excludes 1"]) == ("2", "2 unpaired", "- (n < 3)")
    row = ratio_row(text, "l1", "Circuits:", "faithfulness f", **on)
    assert (row["l1 ÷ vanilla"], row["n"], row["left out"]) == (fmt(0.9 / 0.5), "1", "1 undefined, 2 unpaired")
    row = ratio_row(text, "l1", "Training:", "connection cost", task="moons")
    assert row["l1 ÷ vanilla"] == gm_text([5.0, 6.0], [10.0, 11.0])
    assert "### swap" not in text and "dependency" not in text  # no swap rows; yes/no figures get no ratio
    assert "compared on edges tested" in text


def test_tables_count_undefined_f_and_show_missing_newer_figures_as_na(tmp_path):
    train, discover = hand_made_sweep(tmp_path, normalized_gap=False)
    text = table(discover, ["task", "regime"] + row_keys(discover), QUALITY)
    bimt = [r for r in table_rows(text) if r["regime"] == "bimt"][0]
    assert bimt["faithfulness f"] == str(estimate([0.9, 0.95, 1.0])) + " (1 undefined)"
    assert bimt["logit gap ÷ empty circuit's"] == "n/a" and bimt["seeds"] == "4"
    vanilla = [r for r in table_rows(text) if r["regime"] == "vanilla"][0]
    assert vanilla["faithfulness f"] == expected([0.0, 0.5, 0.6, 0.4])  # f = 0 is a value, not undefined
    ratios = "\n".join(ratio_sections(train, discover))
    assert "logit gap ÷ empty circuit's: n/a" in ratios and "| logit gap ÷ empty" not in ratios


def test_old_sweep_without_edges_tested_compares_speed_on_example_forwards(tmp_path):
    train, discover = hand_made_sweep(tmp_path, edges_tested=False)
    text = "\n".join(ratio_sections(train, discover))
    assert "compared on example-forwards" in text and "no `edges_tested`" in text and "| edges tested |" not in text
    row = ratio_row(text, "bimt", "Circuits:", "example-forwards", task="moons")
    assert row["bimt ÷ vanilla"] == "1 [1, 1]" and row["interval excludes 1"] == "no (zero width)"


def test_pairs_match_the_grid_point_not_only_the_seed(tmp_path):
    """A lam grid: bimt at lam a pairs with vanilla at lam a (vanilla's rows take both values).
    A setting vanilla records once (here width) pairs every bimt width with that vanilla."""
    rows = []
    for regime in ("vanilla", "bimt"):
        for lam in (1e-3, 1e-2):
            for width in ((8,) if regime == "vanilla" else (8, 16)):
                for seed in range(3):
                    cost = (1.0 if regime == "vanilla" else 0.5) * (10 if lam == 1e-2 else 1) * (1 + 0.1 * seed) * width / 8
                    rows.append({"job_id": f"{regime}{lam}{width}{seed}", "kind": "train", "task": "t", "regime": regime,
                                 "seed": seed, "lam": lam, "width": width, "connection_cost": cost})
    write_parquet(rows, tmp_path / "jobs.parquet")
    train, discover = load_jobs(tmp_path)
    text = "\n".join(ratio_sections(train, discover))
    assert ratio_row(text, "bimt", "Training:", "connection cost", lam="0.001", width="8")["bimt ÷ vanilla"] == "0.5 [0.5, 0.5]"
    assert ratio_row(text, "bimt", "Training:", "connection cost", lam="0.01", width="8")["bimt ÷ vanilla"] == "0.5 [0.5, 0.5]"
    assert ratio_row(text, "bimt", "Training:", "connection cost", lam="0.01", width="16")["bimt ÷ vanilla"] == "1 [1, 1]"
    lams = {r["lam"] for r in table_rows(table(train, ["task", "regime"] + row_keys(train), [("connection_cost", "c", "lower")]))}
    assert lams == {"0.001", "0.01"}  # the tables keep grid points apart too


def test_missing_jobs_says_why_it_cannot_list_them(tmp_path):
    from circuitry.orchestrator.report import missing_jobs

    assert missing_jobs(tmp_path, set()) == "the sweep folder has no spec.toml"
    spec = '[sweep]\nname = "m"\n[train]\ntask = "independence"\nregime = "{}"\nsteps = 1\n'
    (tmp_path / "spec.toml").write_text(spec.format("bimtt"))
    why = missing_jobs(tmp_path, set())
    assert why.startswith("its spec.toml does not parse") and "train.regime" in why  # not "no spec.toml"
    (tmp_path / "spec.toml").write_text(spec.format("bimt"))
    assert missing_jobs(tmp_path, set()) == ["train/independence/bimt/seed0"]


def test_target_f_and_order_reach_jobs_parquet_mlflow_and_the_order_section(tmp_path):
    """A spec with target_f and several sender orders, its jobs run in a plain loop (the worker
    functions Ray would call): jobs.parquet carries target_f, tau_found, tau_above and order,
    MLflow has them as params/metrics, and the report's order-sensitivity table shows each
    order's edges kept and held-out f of one model per regime, as the rows say."""
    import torch
    from mlflow.tracking import MlflowClient

    from circuitry.orchestrator.execute import execute_discover, execute_train

    from circuitry.orchestrator.recorder import MlflowLogger, embedded_uri, flat_row
    from circuitry.orchestrator.report_tables import order_sensitivity

    torch.set_num_threads(1)  # tiny nets: threads only contend on the shared 2-core machine

    spec = parse_spec('[sweep]\nname="o"\n[train]\ntask="independence"\nregime=["vanilla", "bimt"]\nseed=[0, 1]\n'
                      'steps=60\nwidth=6\n[[discover]]\nmethod="acdc"\ntarget_f=0.9\n'
                      'order=["ascending", "descending", "random"]\n[[discover]]\nmethod="acdc"\nthreshold=0.001\n')
    records, ckpts = [], {}
    for j in spec.train_jobs():
        result, ckpts[j.id] = execute_train(j)
        records.append(result.record)
    for j in spec.discover_jobs():
        records.append(execute_discover(j, ckpts[j.model_id]).record)
    write_parquet([flat_row(r) for r in records], tmp_path / "jobs.parquet")
    jobs = pd.read_parquet(tmp_path / "jobs.parquet")
    at_target = jobs[jobs["target_f"].notna()]
    assert len(at_target) == 4 * 3 and set(at_target["order"]) == {"ascending", "descending", "random"}
    assert (at_target["faithfulness"] >= 0.9).all() and (at_target["tau_found"] < at_target["tau_above"]).all()
    assert (at_target["tau_above"] <= 1.2 * at_target["tau_found"]).all()
    at_tau = jobs[(jobs["kind"] == "discover") & jobs["target_f"].isna()]
    assert len(at_tau) == 4 and at_tau["tau_found"].isna().all() and (at_tau["threshold"] == 0.001).all()

    logger = MlflowLogger(embedded_uri(tmp_path), "o", tmp_path)
    rec = next(r for r in records if r["settings"].get("target_f") == 0.9)
    logger.log_job(rec)
    run = MlflowClient(embedded_uri(tmp_path)).search_runs([logger.exp_id], "tags.`circuitry.role` = 'job'")[0]
    assert run.data.params["target_f"] == "0.9" and run.data.tags["order"] == rec["settings"]["order"]
    assert run.data.metrics["tau_found"] == rec["figures"]["tau_found"]
    assert run.data.metrics["tau_above"] == rec["figures"]["tau_above"]

    train, discover = load_jobs(tmp_path)
    section = "\n".join(order_sensitivity(discover))
    rows = table_rows(section[section.index("| task"):])
    assert [(r["regime"], r["seed"]) for r in rows] == [("vanilla", "0"), ("bimt", "0")]  # one model each
    for r in rows:
        g = discover[(discover["regime"] == r["regime"]) & (discover["seed"] == 0) & (discover["target_f"] == 0.9)]
        g = g.sort_values("order")
        assert r["discovery"] == "f>=0.9 resample dseed 0"
        assert r["edges kept by order"] == ", ".join(f"{o} {fmt(e)}" for o, e in zip(g["order"], g["n_edges_kept"]))
        assert r["held-out f by order"] == ", ".join(f"{o} {fmt(f)}" for o, f in zip(g["order"], g["eval_faithfulness"]))
        assert r["edges max ÷ min"] == fmt(g["n_edges_kept"].max() / g["n_edges_kept"].min())
    # the tables keep orders and targets apart (rows of one order are never averaged with another's)
    keys = row_keys(discover)
    assert "order" in keys and "target_f" in keys
    assert order_sensitivity(discover[discover["order"] == "ascending"]) == []
