"""ACDC, the definition: read this module first.

Receivers are visited in reverse topological order (output positions ascending, then each hidden
layer down to layer 1); for each receiver its incoming edges in ascending sender position (or the
`order` asked for: `sender_orders`). Edge e is removed for good when

    metric(H without e) - metric(H) < tau        (`removes_edge`)

and restored otherwise, H being the circuit as it stands when e is tried. `acdc_naive` is that
definition literally (one full masked forward per candidate edge) and `exact_naive` the
one-edge-at-a-time scores; they are the references the tests and the benchmark compare the fast
implementations against (`speculate.acdc`, `exact.exact_scores`), which return the same circuit
and the same scores.

Score semantics (docs/design.md): `acdc` scores are the metric increase measured when the edge
was tried; `exact` scores are metric(full model with only this edge ablated) - metric(full
model), where metric(full model) = 0.

All decisions are made in float64. "The same circuit" holds for every decision whose increase is
not within float64 rounding (~1e-16 relative) of tau; a tie at rounding level is decided by
rounding in any implementation, the naive one included, so pick tau above the noise floor.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

from circuitry.workers.graph import Problem
from circuitry.workers.names import ORDERS


def removes_edge(increase, tau):
    """ACDC's one decision, made by every path (naive, speculative, interpolated, guessed): an
    edge goes when removing it raises the metric by less than tau. `increase` is a float or a
    tensor of increases (then the answer is a bool tensor)."""
    return increase < tau


def without_autograd(scorer):
    """Run a scorer under `torch.inference_mode` and hand back ordinary tensors (copies: an
    inference-mode tensor cannot be changed in place or take part in autograd outside the mode).
    The mode drops autograd's bookkeeping from every op, a real share of the time where ACDC is
    mostly op dispatch (dense nets); the naive loops run under it too, so comparisons between the
    implementations stay like for like."""
    def ordinary(x):
        if isinstance(x, torch.Tensor):
            return x.clone()
        if isinstance(x, (list, tuple)):
            return type(x)(ordinary(t) for t in x)
        if isinstance(x, EdgeResult):
            return replace(x, masks=ordinary(x.masks), scores=ordinary(x.scores))
        return x

    @functools.wraps(scorer)
    def run(*args, **kwargs):
        with torch.inference_mode():
            out = scorer(*args, **kwargs)
        return ordinary(out)
    return run


@dataclass
class EdgeResult:
    """What ACDC and the other edge scorers return."""
    masks: list[torch.Tensor]  # bool, one per weight matrix, True = kept
    scores: list[torch.Tensor]  # float64, same shapes, see score semantics above
    forward_examples: int  # example-forwards spent (a partial downstream pass counts as one)
    edges_tested: int | None = None  # acdc: candidates tried (edges into receivers that reach the metric)


def sender_orders(shape: list[int], order: str = "ascending", seed: int = 0) -> dict[tuple[int, int], torch.Tensor] | None:
    """The order in which ACDC tries each receiver's incoming edges (docs/design.md: "its incoming
    edges in ascending sender position, or the order the spec names"): None for ascending (the
    definition's default), else {(layer m, receiver j): sender positions in visiting order}.
    `random` draws one permutation per receiver, in the visiting order of receivers (output
    layer first), from a generator seeded with `seed` (the discover job's seed), so `acdc` and
    `acdc_naive` see the same orders. Receivers are always visited in the same order."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: choose one of {', '.join(ORDERS)}")
    if order == "ascending":
        return None
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for m in range(len(shape) - 1, 0, -1):
        for j in range(shape[m]):
            n = shape[m - 1]
            out[m, j] = torch.arange(n - 1, -1, -1) if order == "descending" else torch.randperm(n, generator=gen)
    return out


@without_autograd
def acdc_naive(problem: Problem, tau: float, max_edges: int | None = None, order: str = "ascending",
               seed: int = 0) -> EdgeResult:
    """The sequential definition, literally: one full masked forward per candidate edge.
    `max_edges` stops after that many candidates (a prefix of the visiting order, for timing);
    edges not reached stay kept with score 0. `order`/`seed`: the sender order (`sender_orders`)."""
    g = problem.graph
    orders = sender_orders(g.shape, order, seed)
    masks = g.full_masks()
    scores = [torch.zeros_like(w) for w in g.weights]
    current = problem.circuit_metric(masks)
    spent, tried = problem.n_examples, 0
    for m in range(g.n_layers, 0, -1):
        for j in range(g.shape[m]):
            for i in (range(g.shape[m - 1]) if orders is None else orders[m, j].tolist()):
                if max_edges is not None and tried >= max_edges:
                    return EdgeResult(masks, scores, spent)
                masks[m - 1][j, i] = False
                new = problem.circuit_metric(masks)
                spent += problem.n_examples
                tried += 1
                scores[m - 1][j, i] = new - current
                if removes_edge(new - current, tau):
                    current = new
                else:
                    masks[m - 1][j, i] = True
    return EdgeResult(masks, scores, spent)


@without_autograd
def exact_naive(problem: Problem) -> torch.Tensor:
    """Reference for `exact.exact_scores`: one full masked forward per edge, canonical order."""
    g = problem.graph
    out = []
    for l, w in enumerate(g.weights):
        for j in range(w.shape[0]):
            for i in range(w.shape[1]):
                masks = g.full_masks()
                masks[l][j, i] = False
                out.append(problem.circuit_metric(masks))
    return torch.tensor(out, dtype=torch.float64)
