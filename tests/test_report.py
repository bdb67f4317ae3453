"""`circuitry report` on a real tiny sweep: the tables' numbers are the Parquet rows they summarise."""
import json
import math
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.cli import main
from orchestrator.report import estimate, fmt, table
from orchestrator.scheduler import Scheduler
from orchestrator.spec import parse_spec

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    spec = parse_spec(SPEC.format(root=root, seeds="[0, 1]"))
    out = Scheduler(spec, echo=lambda m: None, progress=False).run()
    assert out.failed == 0 and out.finished == len(spec.jobs) == 4 * 2 + 4 * 2 * 2 * 2
    return spec


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

    # BIMT / vanilla, paired by seed
    b = rows.set_index("seed")["connection_cost"]
    v = train[(train["task"] == "independence") & (train["regime"] == "vanilla")].set_index("seed")["connection_cost"]
    assert f"| independence | connection cost | {expected(b / v)} |" in report

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
