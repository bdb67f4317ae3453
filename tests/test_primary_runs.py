"""examples/primary_runs.py: --metrics rows beside the task's own, resumable, models reused, and the
verdicts reading only the task's own metric."""
import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def run(monkeypatch):
    """The script's main() in this process, with sys.path and torch's threads restored after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    threads = torch.get_num_threads()
    script = runpy.run_path(str(EXAMPLES / "primary_runs.py"))

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["primary_runs.py", *argv])
        script["main"]()

    yield main
    torch.set_num_threads(threads)


def test_metrics_rows_resume_reuse_the_model_and_the_verdicts_read_the_tasks_own(run, tmp_path, monkeypatch):
    common = ("--tasks", "two_moons", "--regimes", "vanilla", "--steps", "30", "--seeds", "0", "--out", str(tmp_path))
    run(*common)
    model = tmp_path / "models" / "two_moons-vanilla-seed0-steps30.pt"
    saved = model.stat().st_mtime_ns
    # a discover.csv from before --metrics: no metric column; its rows are the task's own metric
    pd.read_csv(tmp_path / "discover.csv").drop(columns="metric").to_csv(tmp_path / "discover.csv", index=False)
    run(*common, "--metrics", "logit_diff")
    run(*common)  # nothing left to do

    train, discover = pd.read_csv(tmp_path / "train.csv"), pd.read_csv(tmp_path / "discover.csv")
    assert len(train) == 1 and model.stat().st_mtime_ns == saved  # trained once, read back after
    assert discover["metric"].isna().sum() == 1 and list(discover["metric"].dropna()) == ["logit_diff"]
    assert discover["target_reached"].all() and (discover["n_edges_kept"] < discover["n_edges_total"]).all()
    monkeypatch.setattr(sys, "path", list(sys.path))
    verdicts = runpy.run_path(str(EXAMPLES / "paper_verdicts.py"))
    _, read = verdicts["load_runs"](tmp_path)
    assert len(read) == 1 and read["metric"].isna().all()
