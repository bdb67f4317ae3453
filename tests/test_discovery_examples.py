"""The examples a discovery runs on (docs/design.md): the model's own held-out test split, the first
half to find the circuit, the second half to grade it; and ACDC's implementation-free cost,
`edges_tested`."""
import json

import numpy as np
import pytest
import torch

from circuitry import tasks
from circuitry.workers.acdc import acdc, acdc_naive
from circuitry.workers.discover import discover, prepare, summary_figures
from circuitry.workers.graph import Graph, Problem
from circuitry.workers.model import CoordMLP
from circuitry.workers.train import TrainConfig, train

torch.set_num_threads(1)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.numpy()}


def test_seed_2_digits_model_is_never_shown_its_training_examples():
    ckpt = train(TrainConfig(task="digits", regime="vanilla", steps=2, seed=2, width=8)).checkpoint
    prep = prepare(ckpt)
    assert prep.examples["data_seed"] == 2
    train_rows = _rows(tasks.get_task("digits").make_data(2).x_train)
    disc = _rows(prep.clean_x)
    held_out = _rows(tasks.get_task("digits").make_data(2).x_test)
    assert torch.equal(ckpt["in_perm"], torch.arange(64))  # vanilla: no swaps, positions are features
    evaluation = _rows(prep.evaluation.clean[0].float())  # layer 0: the inputs in position order
    assert disc and evaluation and not disc & train_rows and not evaluation & train_rows
    assert disc | evaluation == held_out and not disc & evaluation  # the two halves, disjoint
    # what the discover job's seed alone used to choose: seed 0's test split, mostly seed 2's training set
    assert len(_rows(tasks.get_task("digits").make_data(0).x_test) & train_rows) > 0.5 * len(held_out)


def test_halves_of_fresh_examples_corruptions_within_each_half_and_means_from_discovery():
    task = tasks.get_task("independence")
    torch.manual_seed(0)
    ckpt = CoordMLP([4, 6, 5, 2]).to_checkpoint("independence", "vanilla", 0, {"seed": 7})
    x_fresh, _ = task.fresh_examples(7, 2000)
    for ablation in ("resample", "mean"):
        prep = prepare(ckpt, ablation=ablation, seed=3)
        half = 1000
        assert torch.equal(prep.clean_x, x_fresh[:half])
        assert prep.examples == {"data_seed": 7, "examples_from": "generator", "n_test_split": None,
                                 "n_discovery": half, "n_evaluation": half}
        full = Graph.from_checkpoint(ckpt)
        if ablation == "resample":
            # example n of each half is patched by another example of the same half
            want = full.forward(full.features(task.corrupt(x_fresh[half:], 3)))[0]
            assert torch.equal(prep.evaluation.ablated[0], want)
            assert not _rows(prep.problem.ablated[0].float()) & _rows(x_fresh[half:])
        else:  # the evaluation grades the same circuit: ablated to the discovery examples' means
            for a_eval, a_disc in zip(prep.evaluation.ablated, prep.problem.ablated):
                assert torch.equal(a_eval, a_disc[:1].expand(half, -1))
            assert torch.allclose(prep.problem.ablated[0][0], full.features(x_fresh[:half]).mean(0))


@pytest.mark.parametrize("name", ["independence", "feature_sharing", "compositionality", "two_moons",
                                  "planted_teacher"])
def test_fresh_examples_are_seeded_and_none_is_a_training_or_test_example(name):
    task = tasks.get_task(name)
    x, y = task.fresh_examples(4, 2000)
    assert len(x) == len(y) == 2000 and torch.equal(x, task.fresh_examples(4, 2000)[0])
    assert len(_rows(x)) == 2000  # no repeats inside either half
    for seed in (0, 4, 9):  # any seed's split, not only the model's own
        split = task.make_data(seed)
        assert not _rows(x) & (_rows(split.x_train) | _rows(split.x_test))
    if name == "independence":  # the labels are the task's formula of the fresh inputs
        assert torch.allclose(y[:, 0], (x[:, 0] + x[:, 2]) ** 3)
    if name == "two_moons":
        assert set(y.tolist()) == {0, 1}


def test_generalisation_gap_is_held_out_f_minus_discovery_f():
    torch.manual_seed(0)
    ckpt = CoordMLP([4, 6, 5, 2]).to_checkpoint("independence", "vanilla", 0, {"seed": 1})
    s = discover(ckpt, "acdc", 0.01).summary
    assert (s["n_discovery"], s["n_evaluation"]) == (1000, 1000)
    assert s["generalisation_gap"] == s["evaluation"]["faithfulness"] - s["faithfulness"]


def _hand_accuracy(ckpt, x, y) -> float:
    """The checkpoint format's forward (docs/formats.md), in float64, by hand."""
    h = x.double()[:, ckpt["in_perm"]]
    L = len(ckpt["weights"])
    for l, (w, b) in enumerate(zip(ckpt["weights"], ckpt["biases"])):
        h = h @ w.double().T + b.double()
        if l < L - 1:
            h = h * torch.sigmoid(h)
    out = torch.empty_like(h)
    out[:, ckpt["out_perm"]] = h
    return float((out.argmax(1) == y).double().mean())


def test_acceptance_digits_bimt_seed_3(tmp_path):
    """`circuitry train --task digits --regime bimt --steps 300 --seed 3` then `circuitry discover
    --method acdc --threshold 0.01`: graded on seed 3's own held-out examples. (Hidden width 24
    instead of the default 200 keeps the test a few seconds long; the data do not depend on it.)"""
    from circuitry.orchestrator.cli import main

    model = tmp_path / "M"
    # the swap interval of the full-length run: at width 24, 37 swap rounds in 300 steps (the scaled
    # default) leave the net near chance, and this test needs a trained one
    main(["train", "--task", "digits", "--regime", "bimt", "--steps", "300", "--seed", "3", "--width", "24",
          "--swap-every", "500", "--out", str(model)])
    main(["discover", "--model", str(model / "model.pt"), "--method", "acdc", "--threshold", "0.01",
          "--out", str(tmp_path / "C")])
    s = json.loads((tmp_path / "C" / "summary.json").read_text())
    split = tasks.get_task("digits").make_data(3)
    n = len(split.x_test)
    assert s["data_seed"] == 3 and s["n_discovery"] + s["n_evaluation"] == n == 359
    ckpt = torch.load(model / "model.pt", weights_only=True)
    half = s["n_discovery"]
    assert s["evaluation"]["full_accuracy"] == pytest.approx(_hand_accuracy(ckpt, split.x_test[half:], split.y_test[half:]), abs=1e-12)
    assert s["full_accuracy"] == pytest.approx(_hand_accuracy(ckpt, split.x_test[:half], split.y_test[:half]), abs=1e-12)
    assert s["evaluation"]["full_accuracy"] > 0.3  # well above chance (0.1): a trained model, so the check means something
    for key in ("faithfulness", "metric_circuit", "circuit_accuracy", "logit_gap", "normalized_logit_gap"):
        assert np.isfinite(s["evaluation"][key]), key
    assert 0 < s["edges_tested"] <= s["n_edges_total"]
    flat = summary_figures(s)
    assert flat["eval_full_accuracy"] == s["evaluation"]["full_accuracy"] and "evaluation" not in flat


def _edges_tested_by_definition(graph: Graph, masks, relevant: torch.Tensor) -> int:
    """ACDC visits layer m's receivers once the masks of layers >= m are final: a receiver's edges
    are tried iff it reaches a metric output along kept edges of non-zero weight."""
    reach = relevant.clone()
    total = 0
    for m in range(graph.n_layers, 0, -1):
        total += int(reach.sum()) * graph.shape[m - 1]
        live = masks[m - 1] & (graph.weights[m - 1] != 0)
        reach = (live & reach[:, None]).any(0)
    return total


@pytest.mark.parametrize("output", [None, 1])
def test_edges_tested_counts_the_candidates_acdc_tries(output):
    teacher = tasks.get_task("planted_teacher").teacher()  # sparse: many receivers cannot reach
    g = Graph.from_checkpoint(teacher)
    x = tasks.get_task("planted_teacher").make_data(0).x_test[:60]
    p = Problem.build(g, x, x.flip(0), "mse", "resample", output)
    relevant = p.metric.relevant_outputs(g.shape[-1])
    counts = []
    for tau in (1e-4, 1e-2, 0.1):
        res = acdc(p, tau)
        want = _edges_tested_by_definition(g, acdc_naive(p, tau).masks, relevant)
        assert res.edges_tested == want
        counts.append(want)
    assert min(counts) < g.n_edges  # some receivers were cut off and never tried
    d = discover(teacher, "acdc", 1e-4, output=output)
    assert d.summary["edges_tested"] == _edges_tested_by_definition(g, d.masks, relevant)
    assert discover(teacher, "exact", top_k=5).summary["edges_tested"] == g.n_edges
    assert discover(teacher, "eap", top_k=5).summary["edges_tested"] is None
