import pytest
import torch

from circuitry.workers.modularity import pruned_components
import torch.nn.functional as F

from circuitry.tasks import get_task
from circuitry.workers.model import CoordMLP
from circuitry.workers.train import TrainConfig, train

INDEPENDENT = {(frozenset({0, 2}), frozenset({0})), (frozenset({1, 3}), frozenset({1}))}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def lam_schedule(task, steps, at, **overrides):
    recipe = TrainConfig(task, "bimt", steps, **overrides).resolved().recipe()
    return [pytest.approx(recipe.lam_at(s, steps)) for s in at]


def test_lambda_schedules_follow_each_notebook():
    at = (0, 24, 25, 49, 50, 74, 75, 99)
    assert [1e-3 * f for f in (1, 1, 10, 10, 10, 10, 1, 1)] == lam_schedule("independence", 100, at)
    assert [1e-3 * f for f in (1, 1, 3, 3, 3, 3, 3, 3)] == lam_schedule("compositionality", 100, at)
    assert [1e-3 * f for f in (1, 1, 1, 1, 10, 10, 10, 10)] == lam_schedule("two_moons", 100, at)  # never lowered
    assert [0.1 * f for f in (1, 1, 10, 10, 10, 10, 1, 1)] == lam_schedule("modular_addition", 100, at)
    assert [0.01, 0.01, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0] == lam_schedule("mnist", 100, at)
    assert [1e-3, 1e-2, 1e-4] == lam_schedule("independence", 100, (0, 50, 80), final_factor=0.1)
    assert lam_schedule("two_moons", 10000, (4999, 5000)) == [1e-3, 1e-2]  # the notebook's `step == 5000`


# task -> settings as the reference notebooks have them (docs/bimt_reference.md)
REFERENCE = {
    "independence": dict(shape=[4, 20, 20, 2], lr=2e-3, lam=1e-3, l0=0.1, distance_weight=1.0, cost_norm="sum",
                         bias_from=0.75, top_k=5, swap_every=200, batch_size=0, loss="task", dtype="float32"),
    "compositionality": dict(shape=[4, 20, 20, 20, 20, 1], l0=0.1, cost_norm="sum", bias_from=0.75, top_k=5),
    "two_moons": dict(shape=[2, 20, 20, 2], steps=10000, lam=1e-3, l0=0.2, distance_weight=1.0, cost_norm="sum",
                      bias_from=0.0, top_k=10, swap_every=200, lr=2e-3),
    "modular_addition": dict(shape=[64, 50, 50, 59], lr=1e-3, lam=0.1, l0=0.5, distance_weight=2.0, cost_norm="mean",
                             bias_from=0.0, in_fold=2, top_k=30, swap_every=200, dtype="float64", batch_size=0),
    "digits": dict(shape=[64, 100, 100, 10], lr=1e-3, lam=0.01, l0=0.5, distance_weight=2.0, cost_norm="mean",
                   last_layer_distance=False, distance="manhattan", output_layout="ring", swap_inputs=False,
                   bias_from=0.0, top_k=30, swap_every=500, batch_size=100, loss="mse_onehot", dtype="float32"),
    "mnist": dict(shape=[784, 100, 100, 10], steps=40000, lr=1e-3, lam=0.01, l0=0.5, distance_weight=2.0,
                  cost_norm="mean", last_layer_distance=False, distance="manhattan", output_layout="ring",
                  swap_inputs=False, bias_from=0.0, top_k=30, swap_every=500, batch_size=100, loss="mse_onehot"),
}


@pytest.mark.parametrize("task", list(REFERENCE))
def test_task_defaults_resolve_to_the_reference_settings(task):
    cfg = TrainConfig(task, "bimt", get_task(task).recipe.steps).resolved()  # swap_every is the reference's at its length
    record = {**cfg.record(), "shape": list(get_task(task).shape), "steps": get_task(task).recipe.steps}
    for key, value in REFERENCE[task].items():
        assert record[key] == value, key


def test_overrides_keep_their_meaning_and_are_recorded():
    cfg = TrainConfig("modular_addition", "bimt", 100, lam=0.03, lr=5e-3, swap_every=50, top_k=7, final_factor=0.5,
                      batch_size=64).resolved()
    record = cfg.record()
    assert (record["lam"], record["lr"], record["swap_every"], record["top_k"], record["batch_size"]) == (0.03, 5e-3, 50, 7, 64)
    assert record["lam_phases"] == [[0.0, 1.0], [0.25, 10.0], [0.75, 0.5]] and record["final_factor"] == 0.5


def test_bimt_splits_independence_into_two_modules_and_vanilla_does_not():
    bimt = train(TrainConfig("independence", "bimt", 5000, seed=0))
    assert set(pruned_components(bimt.checkpoint, 1e-1)) == INDEPENDENT
    assert bimt.metrics["test_loss"] < 0.05
    vanilla = train(TrainConfig("independence", "vanilla", 5000, seed=0))
    assert pruned_components(vanilla.checkpoint, 1e-1) == [(frozenset({0, 1, 2, 3}), frozenset({0, 1}))]
    # the penalty is what makes it sparse and short-wired
    assert bimt.metrics["connection_cost"] < vanilla.metrics["connection_cost"] / 3
    assert bimt.metrics["weights_above_1e-2"] < vanilla.metrics["weights_above_1e-2"] / 2


@pytest.mark.parametrize("task,steps", [("two_moons", 300), ("digits", 40)])  # full batch; minibatches
def test_training_is_deterministic_for_a_seed(task, steps):
    a = train(TrainConfig(task, "bimt", steps, seed=4, swap_every=20, width=16))
    b = train(TrainConfig(task, "bimt", steps, seed=4, swap_every=20, width=16))
    for wa, wb in zip(a.checkpoint["weights"], b.checkpoint["weights"]):
        assert torch.equal(wa, wb)
    assert torch.equal(a.checkpoint["out_perm"], b.checkpoint["out_perm"])
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


def test_token_task_trains_its_embedding_with_folded_inputs():
    result = train(TrainConfig("modular_addition", "bimt", 30, seed=0, width=16, swap_every=10))
    ckpt = result.checkpoint
    assert ckpt["embedding"].shape == (59, 32) and ckpt["shape"] == [64, 16, 16, 59]
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]
    # in_fold 2: token a's and token b's dimension i share a position and move together
    coords, perm = ckpt["coordinates"][0], ckpt["in_perm"]
    assert torch.equal(coords[:32], coords[32:]) and torch.equal(perm[32:], perm[:32] + 32)
    assert not torch.equal(perm, torch.arange(64))  # the input layer did swap
    assert ckpt["weights"][0].dtype == torch.float32 and ckpt["config"]["dtype"] == "float64"


def test_image_task_lays_neurons_on_sheets_as_the_mnist_notebook():
    result = train(TrainConfig("digits", "bimt", 20, seed=0, width=12, swap_every=10))
    ckpt = result.checkpoint
    coords = ckpt["coordinates"]
    assert [tuple(c.shape) for c in coords] == [(64, 2), (12, 2), (12, 2), (10, 2)]
    assert torch.allclose((coords[-1] - 0.5).norm(dim=1), torch.full((10,), 0.25))  # outputs on a ring
    assert result.metrics["neurons_swapped"] > 0
    assert torch.equal(ckpt["in_perm"], torch.arange(64))  # pixels never swap
    assert ckpt["config"]["distance"] == "manhattan"
    model = CoordMLP.from_checkpoint(ckpt)  # a reloaded model keeps the recorded metric
    d = coords[1][:, None, :] - coords[0][None, :, :]
    assert torch.allclose(model.distances[0], d.abs().sum(-1))
    # minibatches of 100, MSE on one-hot labels (the training loss; the circuit metric stays KL)
    assert result.metrics["train_examples"] == 20 * 100
    data = get_task("digits").make_data(0)
    with torch.no_grad():
        pred = model(data.x_test)
    assert result.metrics["test_loss"] == pytest.approx(float(F.mse_loss(pred, F.one_hot(data.y_test, 10).float())), rel=1e-5)


def test_digits_on_sheets_bimt_is_sparser_and_more_local_than_vanilla():
    bimt = train(TrainConfig("digits", "bimt", 600, seed=0))
    vanilla = train(TrainConfig("digits", "vanilla", 600, seed=0))
    assert bimt.checkpoint["coordinates"][1].shape == (100, 2)  # a 10x10 sheet
    assert bimt.metrics["test_accuracy"] > 0.8 and vanilla.metrics["test_accuracy"] > 0.8
    assert bimt.metrics["weights_above_1e-2"] < vanilla.metrics["weights_above_1e-2"] / 5
    # more local: the |w|-weighted mean wire length is shorter
    def mean_wire(ckpt):
        model = CoordMLP.from_checkpoint(ckpt)
        with torch.no_grad():
            total = sum(float((l.weight.abs() * d).sum()) for l, d in zip(model.linears, model.distances))
            return total / sum(float(l.weight.abs().sum()) for l in model.linears)
    assert mean_wire(bimt.checkpoint) < 0.8 * mean_wire(vanilla.checkpoint)
