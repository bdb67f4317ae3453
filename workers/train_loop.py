"""The training loop every model shares (workers.train for MLPs, workers.train_transformer for
transformers): minibatches, one optimiser step each, BIMT's swaps after every `swap_every`-th step,
a loss-curve point every `log_every` steps (and at the last), the progress callback, and the timing,
memory and swap figures, and the resume points (workers.train_state). What differs between models
(the loss, masks, the connection cost's gradient, the swap itself) comes in as callables; the loop
owns only the order of things."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from circuitry.workers.profile import PeakMemory, SwapTally, training_figures
from circuitry.workers.train_config import TrainConfig, TrainResult, minibatches
from circuitry.workers.train_state import LoopStart, capture, due

# optimise(xb, yb, step) -> the batch's loss, after one optimiser step on it
Optimise = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# checkpoint(steps done, curve so far, swap tally, training seconds so far): a resume point
Checkpoint = Callable[[int, list[dict], SwapTally, float], None]


@dataclass
class LoopOutcome:
    """What the loop measured: the loss curve, the seconds the steps took, memory and swaps."""

    curve: list[dict]
    train_seconds: float
    mem: PeakMemory
    swaps: SwapTally


def batch_of(cfg: TrainConfig, n_train: int) -> int:
    """Examples per step: the minibatch size, or the whole training set for full-batch training."""
    return min(cfg.batch_size, n_train) if cfg.batch_size else n_train


def run_steps(cfg: TrainConfig, device: torch.device, x: torch.Tensor, y: torch.Tensor, optimise: Optimise,
              test_loss: Callable[[], float], swap: Callable[[], int] | None = None,
              after_step: Callable[[int], None] | None = None,
              progress: Callable[[int, int, float], None] | None = None,
              start: LoopStart | None = None, checkpoint: Checkpoint | None = None,
              checkpoint_every: int = 0) -> LoopOutcome:
    """`cfg.steps` steps of `optimise` on minibatches of (x, y), from `start` (a resumed run's step,
    curve and counters; None: step 0). `swap()` (None: the regime has no swaps) moves neurons and
    returns how many; `after_step(step)` runs after every optimiser step (gradual pruning);
    `test_loss()` is read at each curve point. `progress(steps, examples, train_loss)` gets the
    increments since its last call. `checkpoint(...)` runs after every `checkpoint_every`-th step
    but the last (workers.train_state.due)."""
    start = start or LoopStart()
    batches = minibatches(len(x), cfg.batch_size, cfg.seed, device, skip=start.step)
    curve, swaps, last_logged, examples = list(start.curve), start.swaps, start.step, 0
    with PeakMemory(device) as mem:
        t_start = time.perf_counter() - start.seconds
        for step in range(start.step, cfg.steps):
            idx = next(batches)
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            loss = optimise(xb, yb, step)
            if after_step is not None:
                after_step(step)
            examples += len(xb)
            if swap is not None and (step + 1) % cfg.swap_every == 0:
                t0 = time.perf_counter()
                swaps.neurons += swap()
                swaps.rounds += 1
                swaps.seconds += time.perf_counter() - t0
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                with torch.no_grad():
                    curve.append({"step": step, "train_loss": float(loss.detach()), "test_loss": test_loss()})
                if progress:
                    progress(step + 1 - last_logged, examples, curve[-1]["train_loss"])
                    last_logged, examples = step + 1, 0
            if checkpoint is not None and due(step, checkpoint_every, cfg.steps):
                checkpoint(step + 1, curve, swaps, time.perf_counter() - t_start)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t_start
    return LoopOutcome(curve, train_seconds, mem, swaps)


def checkpointer(on_checkpoint: Callable[[dict], None] | None, model: torch.nn.Module, opt: torch.optim.Optimizer,
                 record: dict) -> Checkpoint | None:
    """`run_steps`' checkpoint callback: the run's state (workers.train_state.capture) to
    `on_checkpoint`; None without one."""
    if on_checkpoint is None:
        return None
    return lambda step, curve, swaps, seconds: on_checkpoint(capture(step, model, opt, record, curve, swaps, seconds))


def loop_figures(outcome: LoopOutcome, model: torch.nn.Module, x_test: torch.Tensor, weights: list[torch.Tensor],
                 cfg: TrainConfig, n_train: int) -> dict[str, float]:
    """workers.profile.training_figures for what `run_steps` measured."""
    return training_figures(model, x_test, weights, steps=cfg.steps, batch=batch_of(cfg, n_train),
                            train_seconds=outcome.train_seconds, mem=outcome.mem, swaps=outcome.swaps)


def finish(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, metrics: dict[str, float],
           curve: list[dict], resumed_from_step: int = 0) -> TrainResult:
    """The trained model as a CPU float32 checkpoint recording the resolved config and the device."""
    record = cfg.record()
    record["device"] = device.type
    ckpt = model.cpu().float().to_checkpoint(cfg.task, cfg.regime, cfg.seed, record)
    return TrainResult(checkpoint=ckpt, metrics=metrics, curve=curve, resumed_from_step=resumed_from_step)
