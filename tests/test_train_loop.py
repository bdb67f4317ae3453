"""workers.train_loop: the order of things every training loop shares, checked on a stand-in step."""
import torch

from circuitry.workers.train import TrainConfig
from circuitry.workers.train_loop import batch_of, run_steps


def test_the_loop_steps_swaps_logs_and_reports_progress_on_schedule():
    cfg = TrainConfig("two_moons", "bimt", steps=10, seed=0, swap_every=4, log_every=3, batch_size=3)
    x, y = torch.arange(7.0), torch.zeros(7)
    seen, swapped_after, ticks, pruned = [], [], [], []

    def optimise(xb, yb, step):
        seen.append((step, len(xb)))
        return torch.tensor(float(step))

    loop = run_steps(cfg, torch.device("cpu"), x, y, optimise, test_loss=lambda: -1.0,
                     swap=lambda: swapped_after.append(len(seen)) or 2, after_step=pruned.append,
                     progress=lambda steps, examples, loss: ticks.append((steps, examples, loss)))

    assert [s for s, _ in seen] == list(range(10)) and pruned == list(range(10))
    # minibatches of 3 over 7 examples: 3, 3, 1 per epoch
    assert [n for _, n in seen] == [3, 3, 1, 3, 3, 1, 3, 3, 1, 3]
    assert swapped_after == [4, 8]  # after every swap_every-th step
    assert (loop.swaps.rounds, loop.swaps.neurons) == (2, 4)
    assert [p["step"] for p in loop.curve] == [0, 3, 6, 9]  # every log_every steps and the last
    assert [p["train_loss"] for p in loop.curve] == [0.0, 3.0, 6.0, 9.0]
    assert all(p["test_loss"] == -1.0 for p in loop.curve)
    assert ticks == [(1, 3, 0.0), (3, 7, 3.0), (3, 7, 6.0), (3, 7, 9.0)]  # increments since the last tick
    assert sum(t[1] for t in ticks) == sum(n for _, n in seen)
    assert loop.train_seconds > 0 and batch_of(cfg, 7) == 3 and batch_of(cfg, 2) == 2


def test_a_regime_without_swaps_never_swaps_and_full_batch_uses_every_example():
    cfg = TrainConfig("two_moons", "l1", steps=5, seed=0, log_every=100, batch_size=0)
    x = torch.arange(6.0)
    sizes = []
    loop = run_steps(cfg, torch.device("cpu"), x, x, lambda xb, yb, step: sizes.append(len(xb)) or xb.sum(),
                     test_loss=lambda: 0.0)
    assert sizes == [6] * 5 and loop.swaps.rounds == 0
    assert [p["step"] for p in loop.curve] == [0, 4]
    assert batch_of(cfg, 6) == 6
