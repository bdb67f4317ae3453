"""Checkpoints within a training run (workers.train_state): a run resumed at step k ends with
bitwise the weights, curve and counters of an uninterrupted run."""
import pytest
import torch

from circuitry.workers import train_state
from circuitry.workers.train import TrainConfig, train


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(config, **kw):
    states = []
    result = train(config, on_checkpoint=states.append, **kw)
    return result, states


def _equal(x, y, where="checkpoint"):
    """Bitwise equality of two checkpoints (nested dicts and lists of tensors)."""
    assert type(x) is type(y), where
    if isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _equal(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _equal(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


def _same_model(a, b):
    assert a.checkpoint["weights"]
    _equal(a.checkpoint, b.checkpoint)


@pytest.mark.parametrize("task, regime, steps, overrides", [
    ("independence", "vanilla", 300, {"batch_size": 16, "width": 8}),  # minibatches: the sampler resumes mid-epoch
    ("independence", "bimt", 300, {"swap_every": 40, "width": 8}),  # swaps before and after the checkpoint
    ("induction", "bimt", 30, {"swap_every": 4, "lam": 1.0, "n_layers": 1, "d_model": 16, "d_mlp": 16, "n_heads": 1, "d_head": 4}),  # a transformer
])
def test_resumed_run_is_bitwise_the_uninterrupted_one(task, regime, steps, overrides):
    config = TrainConfig(task, regime, steps, seed=3, log_every=5, **overrides)
    whole, states = _run(config, checkpoint_every=steps // 3)
    assert [s["step"] for s in states] == [steps // 3, 2 * steps // 3]  # never at the last step
    for state in states:
        state = train_state.from_bytes(train_state.to_bytes(state))  # as it travels
        resumed, later = _run(config, resume=state, checkpoint_every=steps // 3)
        assert resumed.resumed_from_step == state["step"]
        _same_model(whole, resumed)
        assert resumed.curve == whole.curve
        assert [s["step"] for s in later] == [s["step"] for s in states if s["step"] > state["step"]]
        for key in ("neurons_swapped", "swap_rounds", "train_loss", "test_loss", "connection_cost"):
            if key in whole.metrics:
                assert resumed.metrics[key] == whole.metrics[key], key
    if regime == "bimt":
        assert whole.metrics["neurons_swapped"] > 0 and states[0]["counters"]["swap_rounds"] > 0


def test_a_state_is_a_copy_taken_by_its_own_run_only():
    config = TrainConfig("independence", "vanilla", 60, width=6, log_every=20)
    whole, states = _run(config, checkpoint_every=20)
    first = states[0]
    assert not torch.equal(first["model"]["linears.0.weight"], whole.checkpoint["weights"][0])  # not a live view
    other = TrainConfig("independence", "vanilla", 60, width=6, log_every=20, seed=1)
    with pytest.raises(train_state.ResumeMismatch, match="settings"):
        train(other, resume=first)
    with pytest.raises(train_state.ResumeMismatch, match="unreadable"):
        train_state.from_bytes(b"not a checkpoint")
    assert _run(config)[1] == []  # no checkpoint_every: no states


def _cli_train(out, *extra):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "circuitry.orchestrator.cli", "train", "--task", "independence",
                           "--regime", "bimt", "--steps", "300", "--width", "6", "--swap-every", "40",
                           "--checkpoint-every", "100", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)


def test_cli_train_goes_on_from_the_checkpoint_in_out(tmp_path):
    from circuitry.orchestrator.cli_checkpoint import CHECKPOINT
    from circuitry.workers.model import load_checkpoint

    # the state a run of the same options left at step 100 when it was stopped
    config = TrainConfig("independence", "bimt", 300, width=6, swap_every=40, device="auto")
    whole, states = _run(config, checkpoint_every=100)
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT).write_bytes(train_state.to_bytes(states[0]))
    proc = _cli_train(out)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from step 100" in proc.stdout and not (out / CHECKPOINT).exists()
    _equal(load_checkpoint(out / "model.pt")["weights"], whole.checkpoint["weights"])
    # another run's state (seed 0's, for a run of seed 1): one line, and the run starts from step 0
    other = tmp_path / "other"
    other.mkdir()
    (other / CHECKPOINT).write_bytes(train_state.to_bytes(states[0]))
    proc = _cli_train(other, "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "not a checkpoint of this run" in line and "step 0" in line]
    assert "resumed" not in proc.stdout and not (other / CHECKPOINT).exists()


def test_ctrl_c_in_cli_train_says_which_step_is_kept_and_the_rerun_goes_on_from_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from circuitry.orchestrator.cli_checkpoint import CHECKPOINT

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "circuitry.orchestrator.cli", "train", "--task", "independence", "--regime",
           "bimt", "--steps", "1000000", "--width", "6", "--checkpoint-every", "50", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / CHECKPOINT).exists(), "no checkpoint was written"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    kept = [line for line in err.splitlines() if line.startswith("interrupted: ")]
    assert kept and str(out / CHECKPOINT) in kept[0] and "the same command goes on" in kept[0], err
    step = int(kept[0].split(" holds step ")[1].split(";")[0].replace(",", ""))
    assert step >= 50 and step % 50 == 0
    assert train_state.from_bytes((out / CHECKPOINT).read_bytes())["step"] == step
    # the same command, stopped at once, starts where the first left off
    again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "resuming from step" not in line and time.monotonic() < deadline:
            line = again.stderr.readline()
            if not line and again.poll() is not None:
                break
        assert f"resuming from step {step:,}" in line
    finally:
        again.kill()
        again.communicate()
