import pytest
import torch

from workers.modularity import pruned_components
from workers.train import TrainConfig, lam_at, train

INDEPENDENT = {(frozenset({0, 2}), frozenset({0})), (frozenset({1, 3}), frozenset({1}))}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_lambda_schedule_follows_the_reference():
    assert [lam_at(s, 100, 1.0, 1.0) for s in (0, 24, 25, 74, 75, 99)] == [1, 1, 10, 10, 1, 1]
    assert lam_at(80, 100, 1.0, 0.1) == pytest.approx(0.1)


def test_bimt_splits_independence_into_two_modules_and_vanilla_does_not():
    bimt = train(TrainConfig("independence", "bimt", 5000, seed=0))
    assert set(pruned_components(bimt.checkpoint, 1e-1)) == INDEPENDENT
    assert bimt.metrics["test_loss"] < 0.05
    vanilla = train(TrainConfig("independence", "vanilla", 5000, seed=0))
    assert pruned_components(vanilla.checkpoint, 1e-1) == [(frozenset({0, 1, 2, 3}), frozenset({0, 1}))]
    # the penalty is what makes it sparse and short-wired
    assert bimt.metrics["connection_cost"] < vanilla.metrics["connection_cost"] / 3
    assert bimt.metrics["weights_above_1e-2"] < vanilla.metrics["weights_above_1e-2"] / 2


def test_training_is_deterministic_for_a_seed():
    a = train(TrainConfig("two_moons", "bimt", 300, seed=4, swap_every=100))
    b = train(TrainConfig("two_moons", "bimt", 300, seed=4, swap_every=100))
    for wa, wb in zip(a.checkpoint["weights"], b.checkpoint["weights"]):
        assert torch.equal(wa, wb)
    assert torch.equal(a.checkpoint["in_perm"], b.checkpoint["in_perm"])
    assert a.metrics["neurons_swapped"] == b.metrics["neurons_swapped"] > 0


@pytest.mark.parametrize("regime", ["vanilla", "l1", "local", "swap", "bimt"])
def test_every_regime_learns_and_reports_its_profile(regime):
    result = train(TrainConfig("two_moons", regime, 600, seed=0, swap_every=200))
    m = result.metrics
    assert m["test_accuracy"] > 0.8
    assert result.curve[0]["train_loss"] > result.curve[-1]["train_loss"]
    for key in ("connection_cost", "train_seconds", "steps_per_second", "swap_seconds", "peak_memory_bytes",
                "n_parameters", "inference_per_second_batch1", "inference_per_second_batch1024",
                "weights_above_1e-2"):
        assert m[key] >= 0, key
    assert m["n_parameters"] == 2 * 20 + 20 + 20 * 20 + 20 + 20 * 2 + 2
    assert (m["swap_seconds"] > 0) == (regime in ("swap", "bimt"))
    assert m["peak_memory_bytes"] > 10 * 2**20  # a real process high-water mark


def test_token_task_trains_its_embedding():
    result = train(TrainConfig("modular_addition", "bimt", 30, seed=0, width=16))
    ckpt = result.checkpoint
    assert ckpt["embedding"].shape == (59, 8) and ckpt["shape"] == [16, 16, 16, 59]
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]


def test_image_task_lays_neurons_on_sheets():
    result = train(TrainConfig("digits", "bimt", 20, seed=0, width=12, swap_every=10))
    coords = result.checkpoint["coordinates"]
    assert [tuple(c.shape) for c in coords] == [(64, 2), (12, 2), (12, 2), (10, 2)]
    assert result.metrics["neurons_swapped"] > 0


def test_digits_on_sheets_bimt_is_sparser_and_more_local_than_vanilla():
    from workers.model import CoordMLP

    bimt = train(TrainConfig("digits", "bimt", 600, seed=0))
    vanilla = train(TrainConfig("digits", "vanilla", 600, seed=0))
    assert bimt.checkpoint["coordinates"][1].shape == (200, 2)  # a 10x20 sheet
    assert bimt.metrics["test_accuracy"] > 0.8 and vanilla.metrics["test_accuracy"] > 0.8
    assert bimt.metrics["weights_above_1e-2"] < vanilla.metrics["weights_above_1e-2"] / 5
    # more local: the |w|-weighted mean wire length is shorter
    def mean_wire(ckpt):
        model = CoordMLP.from_checkpoint(ckpt)
        total = sum(float((l.weight.abs() * d).sum()) for l, d in zip(model.linears, model.distances))
        return total / sum(float(l.weight.abs().sum()) for l in model.linears)
    assert mean_wire(bimt.checkpoint) < 0.8 * mean_wire(vanilla.checkpoint)
