"""examples/prune_control.py's readings: bimt ÷ gmp at a common score, and the pooled reading over
tasks (each task weighted once, seeds resampled within their task). Hand-made rows, no training."""
import json
import math
import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    return runpy.run_path(str(EXAMPLES / "prune_control.py"))


def rows(task: str, seeds, factor: float) -> pd.DataFrame:
    """Per seed, both curves straight in log edges against score (log edges = 10 score - 5), bimt's
    `factor` times gmp's; gmp spans scores 0.80 .. 0.99 and bimt 0.82 .. 0.995, so they share
    0.82 .. 0.99. Plus one dead gmp circuit, which must stay off the curve."""
    out = []
    for seed in seeds:
        for regime, mult, points in (("gmp", 1.0, ((0.5, 0.99), (0.8, 0.95), (0.9, 0.80))),
                                     ("bimt", factor, ((1e-3, 0.995), (1e-2, 0.95), (1e-1, 0.82)))):
            for setting, score in points:
                out.append({"task": task, "regime": regime, "seed": seed, "setting": setting, "test_score": score,
                            "n_edges_kept": mult * math.exp(10 * score - 5), "target_reached": True})
    out.append({"task": task, "regime": "gmp", "seed": seeds[0], "setting": 0.99, "test_score": 0.1,
                "n_edges_kept": 999, "target_reached": False})
    return pd.DataFrame(out)


def test_common_score_reads_the_ratio_of_the_two_curves_in_their_shared_range(script):
    r = script["at_common_score"](rows("t", [0, 1, 2], 0.5))
    assert r["score_range"] == pytest.approx([0.82, 0.99])
    assert r["common_score"] == pytest.approx(0.905)
    assert r["per_seed"] == pytest.approx([0.5, 0.5, 0.5])
    assert r["bimt_over_gmp_edges"] == pytest.approx(0.5)
    low = script["at_common_score"](rows("t", [0, 1, 2], 0.5), position=0.25)
    assert low["common_score"] == pytest.approx(0.82 + 0.25 * 0.17)


def test_pooled_weights_every_task_once_whatever_its_seed_count(script):
    p = script["pooled"]({"a": [0.5, 0.5], "b": [2.0, 2.0, 2.0, 2.0]})
    assert p["bimt_over_gmp_edges"] == pytest.approx(1.0)  # pooling the 6 seeds alike would give 2 ** (1 / 3)
    assert p["bootstrap_95"] == pytest.approx([1.0, 1.0])  # seeds resampled within a task: tasks never mix
    assert p["n_tasks"] == 2 and p["n_seeds"] == 6 and p["seeds_below_1"] == 2


def test_report_prints_each_task_and_the_pooled_reading(script, tmp_path, capsys):
    for task, factor in (("a", 0.5), ("b", 0.8)):
        (tmp_path / task).mkdir()
        rows(task, [0, 1, 2], factor).assign(weights_nonzero=10, **{"weights_above_1e-2": 5}).to_csv(
            tmp_path / task / "rows.csv", index=False)
    script["report"]([tmp_path / "a", tmp_path / "b"])
    out = capsys.readouterr().out
    assert "## a (" in out and "## b (" in out and "## pooled over tasks" in out
    pooled = json.loads(out.split("## pooled over tasks")[1])
    assert pooled["bimt_over_gmp_edges"] == pytest.approx(math.sqrt(0.5 * 0.8))
