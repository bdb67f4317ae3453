"""MIB's normalised faithfulness f, and when it is undefined (a model whose output ignores its
edges gives m(empty) ~ round-off, and f would be noise divided by noise)."""
import math

import pytest
import torch

from circuitry.workers import evaluate as ev
from circuitry.workers.graph import Graph, Problem
from circuitry.workers.model import CoordMLP

torch.set_num_threads(1)


def test_f_values_and_the_undefined_band():
    assert ev.normalized_faithfulness(0.25, 1.0) == pytest.approx(0.75)
    assert ev.normalized_faithfulness(1.5, 1.0) == pytest.approx(-0.5)  # worse than empty: negative, defined
    assert math.isnan(ev.normalized_faithfulness(0.0, 0.0))
    # m(N) = 0 under our metrics, so the relative band needs the metric's scale to catch round-off
    assert ev.normalized_faithfulness(3e-17, 1e-17) == pytest.approx(-2.0)  # no scale: only an exact 0 is caught
    assert math.isnan(ev.normalized_faithfulness(3e-17, 1e-17, scale=1.0))
    rtol = ev.F_UNDEFINED_RTOL
    assert math.isnan(ev.normalized_faithfulness(0.0, rtol * 0.99, scale=1.0))
    assert ev.normalized_faithfulness(0.0, rtol * 1.01, scale=1.0) == pytest.approx(1.0)
    # a general m(N): |m(empty) - m(N)| within rtol of max(|m(empty)|, |m(N)|)
    assert math.isnan(ev.normalized_faithfulness(5.0, 7.0, 7.0 * (1 + 0.5 * rtol)))
    assert ev.normalized_faithfulness(7.5, 7.0, 8.0) == pytest.approx(0.5)
    assert math.isnan(ev.normalized_faithfulness(math.nan, 1.0)) and math.isnan(ev.normalized_faithfulness(0.0, math.inf))


def _problem(kind: str, weight_scale: float, output=None) -> Problem:
    torch.manual_seed(0)
    ckpt = CoordMLP([3, 5, 4]).to_checkpoint("t", "vanilla", 0, {})
    ckpt["weights"][-1] = ckpt["weights"][-1] * weight_scale
    ckpt["biases"] = [b + 1.0 for b in ckpt["biases"]]  # outputs of size ~1 whatever the weights
    g = torch.Generator().manual_seed(1)
    x, xc = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    return Problem.build(Graph.from_checkpoint(ckpt), x, xc, kind, "resample", output)


@pytest.mark.parametrize("kind,output", [("mse", None), ("kl", None), ("kl", 2), ("mse", 1)])
def test_collapsed_model_has_undefined_f_and_a_healthy_one_does_not(kind, output):
    # the last layer's edges move the output by ~1e-8: m(empty) ~ 1e-17, at the KL formula's round-off
    collapsed = _problem(kind, 1e-8, output)
    half = [m.clone() for m in collapsed.graph.full_masks(True)]
    half[0][:, :2] = False
    out = ev.faithfulness(collapsed, half)
    assert 0 < abs(out["metric_empty"]) < 1e-14 and math.isnan(out["faithfulness"])
    # without the metric's scale, f would be a number
    assert math.isfinite(ev.normalized_faithfulness(out["metric_circuit"], out["metric_empty"]))
    healthy = _problem(kind, 1.0, output)
    out = ev.faithfulness(healthy, healthy.graph.full_masks(True))
    assert out["metric_empty"] > 1e-4 and out["faithfulness"] == pytest.approx(1.0)
    assert ev.faithfulness(healthy, healthy.graph.full_masks(False))["faithfulness"] == pytest.approx(0.0)


def test_sparsity_counts_the_nodes_that_kept_edges_touch():
    """A node is kept when a kept edge touches it, as sender or receiver, counted once."""
    masks = [torch.tensor([[True, False, False], [False, False, False]]),  # L0.0 -> L1.0
             torch.tensor([[False, False], [False, True]]),  # L1.1 -> L2.1
             torch.tensor([[False, True]])]  # L2.1 -> L3.0 (L2.1 counted once)
    s = ev.sparsity(masks)
    assert (s["n_edges_total"], s["n_edges_kept"], s["n_nodes_kept"]) == (6 + 4 + 2, 3, 5)


def test_top_k_masks_with_a_shared_ranking_equal_a_fresh_sort():
    g = Graph.from_checkpoint(CoordMLP([3, 4, 2]).to_checkpoint("t", "r", 0, {}))
    scores = torch.tensor([0.5, -0.5, 0.1, 0.0] * 5, dtype=torch.float64)  # ties: the earlier edge first
    ranking = ev.edge_ranking(scores)
    for k in (0, 1, 2, 7, 20):
        fresh, shared = ev.top_k_masks(g, scores, k), ev.top_k_masks(g, scores, k, ranking)
        assert all(torch.equal(a, b) for a, b in zip(fresh, shared))
        assert sum(int(m.sum()) for m in shared) == k
    assert ev.flatten(ev.top_k_masks(g, scores, 2))[:2].tolist() == [True, True]
