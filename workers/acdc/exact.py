"""Exact per-edge ablation scores, fast: metric(full model with only edge e ablated) -
metric(full model) for every edge (or a slice of the canonical edge order, for chunked jobs),
the same numbers as `reference.exact_naive` computed on the downstream evaluator."""
from __future__ import annotations

from typing import Callable

import torch

from circuitry.workers.acdc.downstream import BATCH_ELEMENTS, Downstream, full_state
from circuitry.workers.acdc.interpolant import Interpolant, interpolates
from circuitry.workers.acdc.reference import without_autograd
from circuitry.workers.graph import Problem


@without_autograd
def exact_scores(problem: Problem, start: int = 0, stop: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 batch_elements: int = BATCH_ELEMENTS) -> tuple[torch.Tensor, int]:
    """metric(full model with only edge e ablated) - metric(full model) (= 0) for the edges
    [start, stop) of the canonical order; returns (float64 scores, example-forwards spent).

    Each receiver's candidates are always evaluated in the same fixed batches (aligned to the
    receiver, never to start/stop), and an interpolated receiver (`Interpolant`, fitted on all its
    candidates) gives the same interpolant in every chunk, so any chunking of the edge list gives
    identical bits."""
    g = problem.graph
    offsets = g.edge_offsets()
    stop = offsets[-1] if stop is None else stop
    if not 0 <= start <= stop <= offsets[-1]:
        raise ValueError(f"edge slice [{start}, {stop}) outside 0..{offsets[-1]}")
    out = torch.zeros(stop - start, dtype=torch.float64)  # on the CPU, like acdc's results
    N, spent = problem.n_examples, 0
    z, h = full_state(problem)
    masks = g.full_masks()  # on the problem's device
    for layer in range(g.n_layers):
        lo, hi = max(start, offsets[layer]), min(stop, offsets[layer + 1])
        if lo >= hi:
            continue
        n_send = g.shape[layer]
        down = Downstream(problem, masks, layer + 1, z, h, batch_elements)
        chunk = down.chunk
        diff_all = problem.ablated[layer] - problem.clean[layer]
        for j in range((lo - offsets[layer]) // n_send, (hi - 1 - offsets[layer]) // n_send + 1):
            base = offsets[layer] + j * n_send
            scores = torch.zeros(n_send, dtype=torch.float64, device=problem.device)
            if down.reaches_metric(j):
                plan = down.plan(j)
                deltas = g.weights[layer][j][:, None] * diff_all.T
                silent = (deltas == 0).all(1)
                interp = None  # as in acdc: many candidates whose rows pass a hidden layer (`Interpolant`)
                if interpolates(down, n_send):
                    zj = z[layer + 1][j]  # each candidate alone: states zj + one delta
                    interp, used = Interpolant.fit(down, j, plan, zj + deltas.amin(0).clamp(max=0),
                                                    zj + deltas.amax(0).clamp(min=0))
                    spent += used
                for c in range(0, n_send, chunk):
                    if interp is not None:
                        scores[c:c + chunk] = interp.evaluate(z[layer + 1][j] + deltas[c:c + chunk])[0]
                        continue
                    rows = z[layer + 1][j] + deltas[c:c + chunk]
                    met, _ = down.evaluate(j, rows, plan)
                    scores[c:c + chunk] = met
                    spent += rows.shape[0] * N
                scores[silent] = 0.0
            a, b = max(lo, base), min(hi, base + n_send)
            out[a - start:b - start] = scores[a - base:b - base].cpu()
            if progress:
                progress(b - a)
    return out, spent
