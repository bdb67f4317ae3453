"""A training run's state mid-way (a resume point), so an interrupted job goes on from its last
checkpoint instead of step 0: workers.train hands one to `on_checkpoint` every `checkpoint_every`
steps and takes one back as `resume`.

A state holds everything the rest of the run depends on: the step reached, the model's state dict
(weights, biases, embedding, and the buffers swaps change: coordinates, input/output
permutations), the optimiser's state dict (AdamW's moments and step counts), torch's global RNG
state, the loss curve so far, the swap counters and the training seconds spent. The minibatch
order is a pure function of the seed and the step (train_config.minibatches, a generator of its
own), so resuming skips the batches already drawn rather than storing the sampler. The run's
resolved config (`TrainConfig.record()`, the device aside) is stored too: a state is taken only by
the run it came from. Training on the CPU is deterministic, so a run resumed at step k ends with
bitwise the weights of an uninterrupted one (tests/test_train_resume.py).

On the wire a state is torch.save bytes, read back with `weights_only=True` (tensors, numbers,
strings, lists and dicts only: loading it runs no code).
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field

import torch

from circuitry.workers.profile import SwapTally

FORMAT = "circuitry.train-state/1"


@dataclass
class LoopStart:
    """Where a training loop starts: step 0 with nothing measured, or a resume state's step with
    its loss curve, swap counters and training seconds so far."""

    step: int = 0
    curve: list[dict] = field(default_factory=list)
    swaps: SwapTally = field(default_factory=SwapTally)
    seconds: float = 0.0


class ResumeMismatch(ValueError):
    """A resume state that does not belong to this run (another config, format or shape)."""


def begin(resume: dict | None, config: dict, model: torch.nn.Module, opt: torch.optim.Optimizer) -> LoopStart:
    """Where a training loop starts: from `resume` (checked against `config` and restored into the
    model, optimiser and RNG), or from step 0."""
    if resume is None:
        return LoopStart()
    check(resume, config)
    restore(resume, model, opt)
    c = resume["counters"]
    return LoopStart(resume["step"], [dict(p) for p in resume["curve"]],
                     SwapTally(c["swap_rounds"], c["n_swapped"], c["swap_seconds"]), c["train_seconds"])


def due(step: int, every: int, steps: int) -> bool:
    """Whether a checkpoint follows step `step` (0-based) of `steps`: every `every`-th, never the last."""
    return bool(every) and (step + 1) % every == 0 and step + 1 < steps


def capture(step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, config: dict, curve: list[dict],
            swaps: SwapTally, seconds: float) -> dict:
    """The state after `step` steps, copied: training goes on without changing it."""
    counters = {"swap_seconds": swaps.seconds, "n_swapped": swaps.neurons, "swap_rounds": swaps.rounds,
                "train_seconds": seconds}
    return {
        "format": FORMAT, "step": step, "config": _comparable(config),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": _cpu(copy.deepcopy(opt.state_dict())),
        "torch_rng": torch.get_rng_state(),
        "curve": [dict(c) for c in curve],
        "counters": counters,
    }


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def _comparable(config: dict) -> dict:
    """The config a state must match: every resolved setting but the device (a retry may land on
    another kind of node; the weights travel as they are)."""
    return {k: v for k, v in config.items() if k != "device"}


def check(state: dict, config: dict) -> None:
    """ResumeMismatch unless `state` is a state of the run `config` describes, before its end."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeMismatch(f"not a training state ({FORMAT})")
    if state.get("config") != _comparable(config):
        raise ResumeMismatch("its settings are not this run's")
    step = state.get("step")
    if not isinstance(step, int) or not 0 < step < config["steps"]:
        raise ResumeMismatch(f"its step {step!r} is outside 1..{config['steps'] - 1}")


def restore(state: dict, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load a checked state's model, optimiser and RNG (ResumeMismatch if the tensors do not fit)."""
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ResumeMismatch(f"its tensors do not fit the model ({type(e).__name__})") from None
    torch.set_rng_state(state["torch_rng"])


def to_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def from_bytes(blob: bytes) -> dict:
    """A state from its bytes; ResumeMismatch when they are not one."""
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable bytes: the caller starts from step 0
        raise ResumeMismatch(f"unreadable ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeMismatch(f"not a training state ({FORMAT})")
    return state
