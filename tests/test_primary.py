"""The primary family (orchestrator.primary): pairing by seed, failures counted, Holm across it."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from circuitry.orchestrator.primary import PRIMARY, compare, learned_floor, primary_rows
from circuitry.orchestrator.stats import holm


def _sweep(bimt_edges, vanilla_edges, bimt_acc, vanilla_acc):
    train, disc = [], []
    for regime, edges, acc in (("bimt", bimt_edges, bimt_acc), ("vanilla", vanilla_edges, vanilla_acc)):
        for seed, (e, a) in enumerate(zip(edges, acc)):
            jid = f"{regime}{seed}"
            train.append({"job_id": jid, "task": "digits", "regime": regime, "seed": seed,
                          "lam": 0.01 if regime == "bimt" else 0.01, "test_accuracy": a, "peak_tensor_bytes": 1e5})
            disc.append({"model_id": jid, "method": "acdc", "target_f": 0.95, "ablation": "resample",
                         "order": "ascending", "n_edges_kept": e, "generalisation_gap": -0.01 + 0.001 * seed,
                         "target_reached": True})
    return pd.DataFrame(train), pd.DataFrame(disc)


def test_floor_is_half_way_from_chance_to_vanilla():
    train, _ = _sweep([1] * 3, [1] * 3, [0.9] * 3, [0.9, 0.92, 0.94])
    assert learned_floor(train, "digits", 10) == pytest.approx(0.1 + (0.92 - 0.1) / 2)


def test_edges_ratio_paired_by_seed_holm_adjusted_and_failures_counted():
    bimt = [100, 120, 90, 110, 105]
    vanilla = [400, 500, 380, 420, 460]
    acc_b = [0.95, 0.94, 0.2, 0.96, 0.95]  # seed 2 did not learn (floor 0.1 + 0.85 / 2 = 0.525)
    train, disc = _sweep(bimt, vanilla, acc_b, [0.95] * 5)
    rows = primary_rows(train, disc, {"digits": 10})
    assert rows[rows["regime"] == "bimt"]["learned"].tolist() == [True, True, False, True, True]
    cs = compare(rows, PRIMARY)
    edges = next(c for c in cs if c.endpoint.column == "n_edges_kept")
    logs = np.log([100 / 400, 120 / 500, 110 / 420, 105 / 460])  # seed 2 out: a failure, not a pair
    assert edges.n == 4 and edges.failures == 1
    assert edges.estimate == pytest.approx(np.exp(logs.mean()))
    assert edges.p_differs == pytest.approx(sps.ttest_1samp(logs, 0).pvalue)
    family = [c.p_differs for c in cs] + [c.p_same for c in cs]
    assert edges.p_differs_holm == pytest.approx(holm(family)[cs.index(edges)])
    # far sparser, but one seed failed: not "better" outright
    assert edges.verdict.startswith("n.d. (better where learned")
    acc = next(c for c in cs if c.endpoint.column == "test_score")
    assert acc.n == 4 and acc.estimate == pytest.approx(np.mean([0.0, -0.01, 0.01, 0.0]))


def test_sparser_without_failures_is_better_with_its_effect_size():
    train, disc = _sweep([100, 120, 95, 110, 105, 98], [400, 500, 380, 420, 460, 410], [0.95] * 6, [0.95] * 6)
    cs = compare(primary_rows(train, disc, {"digits": 10}), PRIMARY)
    edges = next(c for c in cs if c.endpoint.column == "n_edges_kept")
    assert edges.verdict == "better" and edges.effect_size < -3
    assert "better" in edges.text() and "d_z" in edges.text()
    gap = next(c for c in cs if c.endpoint.column == "generalisation_gap")
    assert gap.n == 6 and gap.estimate == pytest.approx(0.0)


def test_a_figure_every_seed_shares_is_the_same_not_untestable():
    train, disc = _sweep([100, 120, 95], [400, 500, 380], [0.95] * 3, [0.95] * 3)
    from circuitry.orchestrator.primary import SECONDARY

    cs = compare(primary_rows(train, disc, {"digits": 10}), SECONDARY)
    memory = next(c for c in cs if c.endpoint.column == "peak_tensor_bytes")
    assert memory.estimate == 1.0 and memory.verdict == "same"
    train.loc[train["regime"] == "bimt", "peak_tensor_bytes"] = 2e5  # identical, but twice as much: not the same
    cs = compare(primary_rows(train, disc, {"digits": 10}), SECONDARY)
    assert next(c for c in cs if c.endpoint.column == "peak_tensor_bytes").verdict == "n.d."
