"""What one round of BIMT swaps costs, in time and in memory, three ways side by side in one process
(docs/results.md, "The cost of swaps"):

- notebook:  the reference's own swap (KindXiaoming/BIMT mnist_3.5.ipynb, `relocate`): for every
             top-k neuron of every layer, try every position, calling `get_cc()` each time. As in
             the notebook, `get_cc()` recomputes the distance matrices from the coordinates, runs
             in float32 with autograd on (the notebook calls `mlp.relocate()` in its training loop,
             outside `no_grad`), and the list of costs, each holding its autograd graph, lives
             until the argmin; the input layer is looped over too although its `swap` returns at
             once for images (`if i == 0: return`), so 30 x 784 full costs buy nothing on MNIST.
- recompute: workers.swap.relocate_reference, the same full recompute per candidate, without
             autograd, float64, distances precomputed (the port the tests check choices with).
- circuitry: workers.swap.relocate, closed-form cost deltas (O(n * n_prev) per neuron).

Shapes: digits 64-100-100-10 and 64-200-200-10, MNIST at the notebook's widths 784-100-100-10 and
784-200-200-10, on 2-D sheets with the recipes' settings (manhattan distance, per-layer mean cost,
top_k 30, inputs not swapped). Weights: random, heavy-tailed (as under an L1 penalty); the cost of
a round does not depend on the values.

Memory is the process's resident high-water mark above its resident size at the start of the
measured block (workers.profile.PeakMemory: VmHWM reset through /proc/self/clear_refs), with
glibc's mmap threshold fixed at 64 KiB (the script re-executes itself with MALLOC_MMAP_THRESHOLD_
set) so that every large tensor is mapped and unmapped, not kept in a heap a later block reuses.
Beside it, one training step (forward, backward, AdamW; batch 100) of the same network as the
yardstick for "training memory". CPU only; time is wall-clock, one round each.

    .venv/bin/python benchmarks/swap_cost.py
"""
from __future__ import annotations

import copy
import ctypes
import os
import sys
import time

import torch

from circuitry.tasks import get_task
from circuitry.workers.model import CoordMLP
from circuitry.workers.profile import PeakMemory
from circuitry.workers.swap import relocate, relocate_reference, swap_layers, swap_neurons, top_neurons
from circuitry.workers.train import layout

SHAPES = [("digits", [64, 100, 100, 10]), ("digits", [64, 200, 200, 10]),
          ("mnist", [784, 100, 100, 10]), ("mnist", [784, 200, 200, 10])]


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def make_model(task_name: str, shape: list[int]) -> CoordMLP:
    task = get_task(task_name)
    recipe = task.recipe
    torch.manual_seed(0)
    model = CoordMLP(shape, layout(shape, True, task.input_grid, recipe), l0=recipe.l0, distance=recipe.distance)
    with torch.no_grad():  # heavy-tailed, like a net under an L1 penalty
        for lin in model.linears:
            lin.weight.mul_(torch.rand_like(lin.weight) ** 4 * 5)
    return model


def notebook_cc(model: CoordMLP, weight_factor: float = 2.0) -> torch.Tensor:
    """The notebook's get_cc(): manhattan distances recomputed each call, per-layer mean, biases
    included, float32, autograd on."""
    cc = 0
    coords = [c if c.dim() == 2 else c[:, None] for c in model.coordinates]
    for lin, c_in, c_out in zip(model.linears, coords[:-1], coords[1:]):
        dist = torch.sum(torch.abs(c_out.unsqueeze(dim=1) - c_in.unsqueeze(dim=0)), dim=2)
        cc += torch.mean(torch.abs(lin.weight) * (weight_factor * dist + model.l0))
        cc += torch.mean(torch.abs(lin.bias) * model.l0)
    return cc


def notebook_relocate(model: CoordMLP, top_k: int, swap_inputs: bool) -> int:
    """The notebook's relocate(): every neuron layer, inputs included (a no-op swap there when
    inputs do not move), a full get_cc() per candidate position, kept until the argmin."""
    moved = 0
    for i in range(len(model.linears) + 1):
        n = model.shape[i]
        for j in top_neurons(model, i, top_k):
            ccs = []
            for k in range(n):
                if i > 0 or swap_inputs:
                    swap_neurons(model, i, j, k)
                ccs.append(notebook_cc(model))
                if i > 0 or swap_inputs:
                    swap_neurons(model, i, j, k)
            k = int(torch.argmin(torch.stack(ccs)))
            if (i > 0 or swap_inputs) and k != j:
                swap_neurons(model, i, j, k)
                moved += 1
    return moved


def training_step(model: CoordMLP, batch: int = 100) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x = torch.randn(batch, model.shape[0])
    y = torch.eye(model.shape[-1])[torch.randint(model.shape[-1], (batch,))]
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(fn, model: CoordMLP) -> tuple[float, int, CoordMLP]:
    """(seconds, peak resident bytes above the start, the model after) of fn(model copy)."""
    m = copy.deepcopy(model)
    _trim()
    with PeakMemory("cpu") as mem:
        t0 = time.perf_counter()
        fn(m)
        seconds = time.perf_counter() - t0
    return seconds, mem.delta_bytes, m


def same_layout(a: CoordMLP, b: CoordMLP) -> bool:
    return all(torch.equal(x.weight, y.weight) for x, y in zip(a.linears, b.linears)) and torch.equal(a.out_perm, b.out_perm)


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(1)
    mib = 1 << 20
    print("one swap round (top_k 30, inputs not swapped) | peak resident memory above the start, MiB | "
          "one training step (batch 100) as the yardstick")
    head = (f"{'network':<22} {'notebook s':>10} {'recompute s':>11} {'circuitry s':>11} {'nb/circ':>8} "
            f"{'nb MiB':>8} {'recomp MiB':>10} {'circ MiB':>8} {'step MiB':>8} {'nb/step':>8} {'circ/step':>9} "
            f"{'same':>5}")
    print(head)
    warm = make_model("digits", [64, 10, 10, 10])  # torch's one-time allocations are nobody's cost
    for fn in (training_step, lambda m: relocate(m, 2, "mean", False), lambda m: notebook_relocate(m, 2, False)):
        measure(fn, warm)
    for task, shape in SHAPES:
        model = make_model(task, shape)
        top_k, swap_inputs = get_task(task).recipe.top_k, get_task(task).recipe.swap_inputs
        t_step, m_step, _ = measure(training_step, model)
        t_c, m_c, after_c = measure(lambda m: relocate(m, top_k, "mean", swap_inputs), model)
        t_r, m_r, after_r = measure(lambda m: relocate_reference(m, top_k, "mean", swap_inputs), model)
        t_n, m_n, after_n = measure(lambda m: notebook_relocate(m, top_k, swap_inputs), model)
        same = same_layout(after_c, after_r) and same_layout(after_c, after_n)
        ratio = lambda a, b: f"{a / b:.0f}" if b else "inf"  # noqa: E731
        name = f"{task} {'-'.join(map(str, shape))}"
        print(f"{name:<22} {t_n:10.2f} {t_r:11.2f} {t_c:11.4f} {t_n / t_c:8.0f} {m_n / mib:8.1f} {m_r / mib:10.1f} "
              f"{m_c / mib:8.2f} {m_step / mib:8.2f} {ratio(m_n, m_step):>8} {m_c / max(m_step, 1):9.2f} {str(same):>5}",
              flush=True)
    print(f"layers swapped: {list(swap_layers(make_model('digits', [64, 100, 100, 10]), False))} "
          "(the notebook also loops over layer 0's candidates)")


if __name__ == "__main__":
    main()
