"""What a training checkpoint costs (workers.train_state, orchestrator.checkpoints): for the
independence (4-20-20-2), digits (64-200-200-10) and MNIST-shaped (784-100-100-10) networks with
AdamW's moments filled, the state's size, the seconds to capture and serialise it, and to write
it as the driver does (signed, fsynced, renamed), beside the seconds of the steps between two
checkpoints at the default `checkpoint_every` (measured on the same network, full batch of 256).

    .venv/bin/python benchmarks/checkpoints.py
"""
from __future__ import annotations

import tempfile
import time

import torch

from circuitry.orchestrator.checkpoints import CheckpointStore
from circuitry.workers import train_state
from circuitry.workers.model import CoordMLP
from circuitry.workers.profile import SwapTally
from circuitry.workers.names import DEFAULT_CHECKPOINT_EVERY
from circuitry.workers.train import layout

SHAPES = {"independence": [4, 20, 20, 2], "digits": [64, 200, 200, 10], "mnist": [784, 100, 100, 10]}


def best_of(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"{'network':<13} {'state KB':>9} {'capture+bytes s':>15} {'driver write s':>14} "
          f"{'steps between s':>15} {'overhead':>9}")
    with tempfile.TemporaryDirectory() as sweep:
        store = CheckpointStore(sweep)
        for name, shape in SHAPES.items():
            model = CoordMLP(shape, layout(shape, sheets=False, input_grid=None))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x, y = torch.randn(256, shape[0]), torch.randn(256, shape[-1])

            def step():
                loss = ((model(x) - y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

            step_s = best_of(lambda: [step() for _ in range(50)], 3) / 50
            record = {"steps": 10 ** 6}
            blob = train_state.to_bytes(train_state.capture(1, model, opt, record, [], SwapTally(), 0.0))
            capture_s = best_of(lambda: train_state.to_bytes(train_state.capture(1, model, opt, record, [], SwapTally(), 0.0)))
            write_s = best_of(lambda: store.save("0123456789abcdef", 1, blob))
            between = step_s * DEFAULT_CHECKPOINT_EVERY
            print(f"{name:<13} {len(blob) / 1024:>9.0f} {capture_s:>15.4f} {write_s:>14.4f} {between:>15.2f} "
                  f"{(capture_s + write_s) / between:>9.2%}")


if __name__ == "__main__":
    main()
