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


def _same_model(a, b):
    assert a.checkpoint["weights"] and len(a.checkpoint["weights"]) == len(b.checkpoint["weights"])
    for key in ("weights", "biases", "coordinates"):
        for x, y in zip(a.checkpoint[key], b.checkpoint[key]):
            assert torch.equal(x, y), key
    for key in ("in_perm", "out_perm"):
        assert torch.equal(torch.as_tensor(a.checkpoint[key]), torch.as_tensor(b.checkpoint[key])), key


@pytest.mark.parametrize("regime, overrides", [
    ("vanilla", {"batch_size": 16}),  # minibatches: the sampler resumes mid-epoch
    ("bimt", {"swap_every": 40}),  # swaps before and after the checkpoint
])
def test_resumed_run_is_bitwise_the_uninterrupted_one(regime, overrides):
    config = TrainConfig("independence", regime, 300, seed=3, width=8, log_every=25, **overrides)
    whole, states = _run(config, checkpoint_every=100)
    assert [s["step"] for s in states] == [100, 200]  # never at the last step
    for state in states:
        state = train_state.from_bytes(train_state.to_bytes(state))  # as it travels
        resumed, later = _run(config, resume=state, checkpoint_every=100)
        assert resumed.resumed_from_step == state["step"]
        _same_model(whole, resumed)
        assert resumed.curve == whole.curve
        assert [s["step"] for s in later] == [s["step"] for s in states if s["step"] > state["step"]]
        for key in ("neurons_swapped", "swap_rounds", "train_loss", "test_loss", "connection_cost"):
            if key in whole.metrics:
                assert resumed.metrics[key] == whole.metrics[key], key
    if regime == "bimt":
        assert whole.metrics["neurons_swapped"] > 0 and states[0]["counters"]["swap_rounds"] == 2


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
