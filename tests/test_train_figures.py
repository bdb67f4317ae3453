"""Train figures a referee reads (issue 29): task performance on its own scale (test accuracy,
R^2), swap rounds that scale with the run, and the allocator's view of a step's memory."""
import torch

from circuitry.tasks import get_task
from circuitry.workers.names import resolved_swap_every
from circuitry.workers.train import TrainConfig, train

torch.set_num_threads(1)


def test_regression_reports_r2_and_classifier_accuracy():
    m = train(TrainConfig(task="independence", regime="vanilla", steps=300, seed=0)).metrics
    assert 0.5 < m["test_r2"] <= 1 and m["train_r2"] <= 1  # learns a good part of the formula in 300 steps
    x = get_task("independence").make_data(0)
    assert "test_accuracy" not in m
    c = train(TrainConfig(task="two_moons", regime="vanilla", steps=200, seed=0)).metrics
    assert 0.5 < c["test_accuracy"] <= 1 and "test_r2" not in c
    del x


def test_swap_interval_scales_with_steps_and_rounds_are_counted():
    digits = get_task("digits").recipe
    assert digits.steps == 20000 and digits.swap_every == 500
    assert resolved_swap_every("bimt", 2000, None, digits) == 50  # 2,000 steps: 40 rounds, as 20,000 at 500
    assert resolved_swap_every("bimt", 20000, None, digits) == 500
    assert resolved_swap_every("bimt", 2000, 7, digits) == 7  # given: kept
    assert resolved_swap_every("vanilla", 2000, None, digits) == 500  # never swaps: the recipe's figure, ids unchanged
    assert resolved_swap_every("prune", 2000, None, digits) == 50  # matched to bimt's settings
    cfg = TrainConfig(task="digits", regime="bimt", steps=2000).resolved()
    assert cfg.steps // cfg.swap_every >= 40
    m = train(TrainConfig(task="independence", regime="bimt", steps=400, seed=0)).metrics
    assert m["swap_rounds"] == 100  # independence: every 200 of 20,000 steps, so every 4 of 400
    assert m["neurons_swapped"] >= 0
    assert train(TrainConfig(task="independence", regime="local", steps=40, seed=0)).metrics["swap_rounds"] == 0


def test_peak_tensor_bytes_within_2x_of_a_hand_count():
    """digits at hidden width 32, minibatches of 100, float32: parameters, gradients and AdamW's two
    moments are 4 copies of the parameters; a step's activations are the batch's pre- and
    post-activation of each hidden layer, the logits, and the input (a minibatch is gathered)."""
    width, batch = 32, 100
    m = train(TrainConfig(task="digits", regime="bimt", steps=3, seed=0, width=width)).metrics
    n_params = 64 * width + width + width * width + width + width * 10 + 10
    activations = batch * (64 + 2 * width + 2 * width + 10)
    hand = 4 * (4 * n_params + activations)
    assert hand / 2 <= m["peak_tensor_bytes"] <= 2 * hand, (m["peak_tensor_bytes"], hand)
    assert m["peak_tensor_bytes"] < m["peak_memory_bytes"] / 10  # the runtime dominates the resident peak
