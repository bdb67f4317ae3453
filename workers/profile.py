"""The computational profile of a model or a job: memory high-water marks and inference speed.

CPU peak memory is the process's resident high-water mark (VmHWM), reset at the start of the
measured region where the kernel allows it (/proc/self/clear_refs), so a long-lived worker that
ran a bigger job earlier does not report that job's peak. On CUDA it is torch's allocator peak.

The resident peak is mostly the torch runtime (~600 MB for a ~1 MB model), so it cannot tell two
regimes of one network apart. `peak_tensor_bytes` is the model's own: the allocator's view of
one training step (parameters, optimiser state, and the peak of what the step allocates: gradients,
activations, temporaries), the figure the seed's "memory" claim is about.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident memory now (0 where /proc is not there)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib else 0


class PeakMemory:
    """Context manager: `peak_bytes` (high-water mark inside the block) and `delta_bytes`
    (that peak above the resident size at entry)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.delta_bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            try:  # "5" resets the peak RSS counter of this process (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self._start = (_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            import resource

            hwm = _status_kib("VmHWM")
            self.peak_bytes = hwm * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta_bytes = max(0, self.peak_bytes - self._start)
        return False


@torch.no_grad()
def inference_speed(model: torch.nn.Module, example: torch.Tensor, batch: int, seconds: float = 0.005) -> float:
    """Examples per second of `model` on batches of `batch` copies of `example` rows: `batch` over
    the median time of one forward, timed one by one for about `seconds` (at least 3 forwards).
    The median of single forwards is as stable as a long mean on an idle machine and steadier on
    a shared one, so a few milliseconds suffice: the profile is part of every train job's fixed
    cost."""
    x = example[torch.arange(batch) % example.shape[0]]
    model(x)  # warm-up
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.is_cuda else (lambda: None)  # noqa: E731
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return batch / times[len(times) // 2]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_above(weights: list[torch.Tensor], fraction: float) -> int:
    """How many weights exceed `fraction` of the largest |w| in the network."""
    top = max(float(w.abs().max()) for w in weights)
    return sum(int((w.abs() > fraction * top).sum()) for w in weights)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null: kineto (torch.profiler's backend) writes a start and a stop
    line there from C++ at every profile, one pair per train job, whatever Python's sys.stderr is."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_step_peak(step: Callable[[], object]) -> int:
    """The most bytes the CPU allocator held above its level at the start of `step()`: the running
    sum of torch.profiler's memory events (allocations positive, frees negative) in time order."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def peak_tensor_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer,
                      step: Callable[[torch.nn.Module, torch.optim.Optimizer], object], device: torch.device) -> int:
    """Bytes of tensors alive at the peak of one training step, `step(model, opt)`, as the
    allocator sees them: the parameters and the optimiser's state (AdamW: two moments per
    parameter), which live across steps, plus the most the step allocates on top (gradients,
    saved activations, temporaries). Measured on copies of `model` and `opt` (whose state must
    exist: call after a step), gradients unset, so the step allocates them as the first step of a
    run does; torch.profiler's memory events on the CPU, torch.cuda.max_memory_allocated on CUDA."""
    probe = copy.deepcopy(model)
    probe_opt = type(opt)(probe.parameters())  # its settings and state come with load_state_dict
    probe_opt.load_state_dict(opt.state_dict())
    for p in probe.parameters():
        p.grad = None
    resident = tensor_bytes(probe.parameters()) + tensor_bytes(
        t for state in probe_opt.state.values() for t in state.values())
    run = lambda: step(probe, probe_opt)  # noqa: E731
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return resident + torch.cuda.max_memory_allocated(device) - before
    return resident + _cpu_step_peak(run)


@dataclass
class SwapTally:
    """What a training loop's swap rounds did: rounds run, neurons moved, seconds spent."""

    rounds: int = 0
    neurons: int = 0
    seconds: float = 0.0


def training_figures(model: torch.nn.Module, x_test: torch.Tensor, weights: list[torch.Tensor], *, steps: int,
                     batch: int, train_seconds: float, swaps: SwapTally, mem: PeakMemory) -> dict[str, float]:
    """The figures of metrics.json that every training loop reports alike (MLP and transformer):
    time, swaps, memory, size, inference speed and how many weights stay above a fraction of the
    largest."""
    return {
        "train_seconds": train_seconds,
        "steps_per_second": steps / train_seconds,
        "swap_seconds": swaps.seconds,
        "swap_share": swaps.seconds / train_seconds,
        "swap_rounds": swaps.rounds,
        "neurons_swapped": swaps.neurons,
        "peak_memory_bytes": mem.peak_bytes,
        "peak_memory_delta_bytes": mem.delta_bytes,
        "n_parameters": count_parameters(model),
        "inference_per_second_batch1": inference_speed(model, x_test, 1),
        "inference_per_second_batch1024": inference_speed(model, x_test, 1024),
        "train_examples": steps * batch,
        "weights_above_1e-2": weights_above(weights, 1e-2),
        "weights_above_5e-2": weights_above(weights, 5e-2),
        "weights_above_1e-1": weights_above(weights, 1e-1),
    }
