"""Training transformer tasks end to end: the CLI, metrics.json, the checkpoint, the regimes."""
import json

import pytest
import torch

from circuitry.orchestrator.cli import main
from circuitry.tasks import get_task
from circuitry.tasks.induction import HALF, generate, head_scores
from circuitry.workers.train import TrainConfig, checkpoint_fit, train
from circuitry.workers.transformer import Transformer


def run_cli(args, capsys):
    """(exit code, captured output): main returns on success and exits on bad input."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_cli_trains_induction_under_bimt_with_swaps(tmp_path, capsys):
    out = tmp_path / "run"
    code, io = run_cli(["train", "--task", "induction", "--regime", "bimt", "--steps", "40", "--swap-every", "10",
                        "--out", str(out)], capsys)
    assert code == 0, io.err
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["format"] == "circuitry.transformer/1" and ckpt["regime"] == "bimt"
    assert ckpt["weights"]["blocks.1.attn.W_K"].shape == (2, 32, 16)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["swap_rounds"] == 4 and metrics["neurons_swapped"] > 0
    assert 0 <= metrics["induction_accuracy"] <= 1 and metrics["config"]["swap_every"] == 10
    assert (out / "network.png").read_bytes()[:4] == b"\x89PNG"
    assert "induction_accuracy" in io.out
    fit = checkpoint_fit(ckpt)  # the checkpoint reproduces the run's losses
    assert fit["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)


def test_cli_train_of_a_tracr_task_returns_its_compiled_weights(tmp_path, capsys):
    # fixed weights have no training speed: the CLI's line must not need one
    out = tmp_path / "run"
    code, io = run_cli(["train", "--task", "tracr_frac_prevs", "--regime", "vanilla", "--out", str(out)], capsys)
    assert code == 0, io.err
    assert torch.load(out / "model.pt", weights_only=True)["format"] == "circuitry.transformer/1"
    assert "tracr_frac_prevs/vanilla" in io.out and "steps/s" not in io.out


@pytest.mark.parametrize("args,needle", [
    (["--task", "tracr_reverse", "--regime", "bimt"], "--regime: tracr_reverse's weights are compiled"),
    (["--task", "induction", "--regime", "vanilla", "--width", "8"], "--width: induction trains a transformer"),
])
def test_bad_transformer_train_input_is_one_line(args, needle, tmp_path, capsys):
    code, io = run_cli(["train", *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and io.err.count("\n") == 1 and needle in io.err


@pytest.mark.parametrize("regime", ["vanilla", "l1", "local", "swap", "bimt"])
def test_every_regime_learns_incontext(regime):
    result = train(TrainConfig(task="incontext", regime=regime, steps=150, swap_every=50, log_every=149))
    curve, m = result.curve, result.metrics
    assert m["test_loss"] < 0.5 * curve[0]["test_loss"]
    assert m["swap_rounds"] == (3 if regime in ("swap", "bimt") else 0)
    assert result.checkpoint["config"]["lam_phases"] == [[0.0, 1.0], [0.25, 10.0], [0.75, 100.0]]


def test_penalty_regimes_shrink_the_connection_cost():
    costs = {r: train(TrainConfig(task="incontext", regime=r, steps=150, lam=0.05, log_every=149)).metrics["connection_cost"]
             for r in ("vanilla", "local")}
    assert costs["local"] < costs["vanilla"]


def test_head_scores_find_a_hand_built_previous_token_head():
    n = 2 * HALF
    prev = torch.zeros(1, 1, n, n)
    prev[0, 0, 0, 0] = 1
    prev[0, 0, torch.arange(1, n), torch.arange(n - 1)] = 1
    induction = torch.zeros(1, 1, n, n)
    induction[0, 0, :, 0] = 1
    t = torch.arange(HALF, n)
    induction[0, 0, t] = 0
    induction[0, 0, t, t - HALF + 1] = 1
    p_prev, i_prev = head_scores(prev)
    p_ind, i_ind = head_scores(induction)
    assert p_prev.item() == 1 and i_ind.item() == 1 and i_prev.item() < 0.2 and p_ind.item() < 0.5


def test_induction_data_repeats_distinct_tokens():
    d = generate(3)
    x = d.x_train
    assert x.shape[1] == 2 * HALF and torch.equal(x[:, :HALF], x[:, HALF:])
    assert all(len(set(row)) == HALF for row in x[:50, :HALF].tolist())
    assert torch.equal(d.y_train, x[:, HALF + 1:])  # next tokens at the scored positions
    task = get_task("induction")
    assert task.positions == tuple(range(HALF, 2 * HALF - 1))
    model = Transformer(task.transformer)
    assert task.loss(model(x[:4]), d.y_train[:4]).shape == ()


def test_prune_a_transformer_to_the_bimt_models_counts():
    from circuitry.workers.prune import PruneConfig, matrices, prune

    vanilla = train(TrainConfig(task="induction", regime="vanilla", steps=30)).checkpoint
    bimt = train(TrainConfig(task="induction", regime="bimt", steps=30, lam=1.0, swap_every=10)).checkpoint
    result = prune(vanilla, bimt, PruneConfig(finetune_steps=5, match_fraction=0.3))
    m, ckpt = result.metrics, result.checkpoint
    assert ckpt["regime"] == "prune" and ckpt["format"] == "circuitry.transformer/1"
    assert m["weights_nonzero"] == m["prune_target"] < sum(w.numel() for w in matrices(vanilla).values())
    counts = ckpt["config"]["layer_counts"]
    for (name, w), k in zip(matrices(ckpt).items(), counts):
        assert int((w != 0).sum()) == k, name
    assert torch.equal(ckpt["weights"]["pos_embed.W_pos"] != 0, torch.ones_like(ckpt["weights"]["pos_embed.W_pos"]) > 0)


def test_induction_shifted_repeats_at_a_varying_offset():
    from circuitry.tasks.induction import SHIFT, generate_shifted
    d = generate_shifted(3)
    x, n = d.x_train, 2 * HALF + SHIFT
    assert x.shape[1] == n and all(len(set(row)) == HALF + SHIFT for row in x[:50, :HALF + SHIFT].tolist())
    # each scored token's earlier occurrence: the offset varies over 0 .. SHIFT extra positions
    second = x[:, HALF + SHIFT:]
    offsets = {int(HALF + SHIFT - row[:HALF + SHIFT].tolist().index(int(s[0]))) for row, s in zip(x[:200], second[:200])}
    assert offsets == set(range(HALF, HALF + SHIFT + 1))
    assert all(set(row[HALF + SHIFT:].tolist()) <= set(row[:HALF + SHIFT].tolist()) for row in x[:50])
    task = get_task("induction_shifted")
    assert torch.equal(d.y_train, x[:, HALF + SHIFT + 1:])  # next tokens at the scored positions
    assert task.positions == tuple(range(HALF + SHIFT, n - 1)) and task.transformer.n_ctx == n
    assert get_task("induction").transformer.n_ctx == 2 * HALF  # the default task is unchanged


def test_head_scores_from_tokens_follow_the_copy_wherever_it_is():
    from circuitry.tasks.induction import generate_shifted
    x = generate_shifted(0).x_test[:64]
    n = x.shape[1]
    t = torch.arange(n - HALF, n)
    key = torch.stack([torch.tensor([row[:q].tolist().index(int(row[q])) + 1 for q in t]) for row in x])
    pattern = torch.zeros(64, 1, n, n)
    pattern[torch.arange(64)[:, None], 0, t, key] = 1
    assert head_scores(pattern, tokens=x)[1].item() == 1
    assert head_scores(pattern)[1].item() < 0.4  # the fixed offset finds the copy only where r = SHIFT
    plain = generate(0).x_test[:8]  # on `induction` both readings agree
    fixed = torch.rand(8, 2, 2 * HALF, 2 * HALF, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(head_scores(fixed)[1], head_scores(fixed, tokens=plain)[1])
