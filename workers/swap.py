"""BIMT's neuron swaps, vectorized.

Every `swap_every` steps, for each neuron layer (inputs and outputs included), the top-k neurons by
incident |W| are each moved to the position that minimises the connection cost, by swapping with
the neuron there. A swap exchanges two neurons' incoming rows, outgoing columns and biases (and the
input/output permutation at the ends), so the network computes exactly the same function.

The reference (KindXiaoming/BIMT, `relocate_ij`) recomputes the whole connection cost for every
candidate position. Only the rows and columns of the two swapped neurons change, so the change of
cost for swapping j with every k is, in closed form (l0 terms cancel):

    delta(k) = M[j,k] + M[k,j] - M[j,j] - M[k,k],   M[r,p] = sum_q |W_in[r,q]| * D_in[p,q]
             + the same with N[r,p] = sum_q |W_out[q,r]| * D_out[q,p] for the outgoing side,

where M[r, p] is the wire cost of neuron r's incoming weights if it sat at position p. Only row j,
column j and the diagonal of M are needed: O(n * n_prev) per relocated neuron instead of
O(n * total weights). The argmin (first index on ties, as torch.argmin) picks the same position
as the full recompute; `relocate_reference` is that recompute, kept for tests and benchmarks.

As the reference, swaps always weigh the wire length of every layer (its `relocate_ij` calls
`get_cc()` with its defaults, also where training drops the last layer's wire length, as MNIST's
does); the distance weight scales every term alike and so cannot change the choice, but the
per-layer mean (`norm="mean"`) weighs a layer's terms by 1 / its number of weights. With
`model.in_fold` > 1 an input position holds `in_fold` neurons (columns p, p + n/fold, ...) that
move together, and `swap_inputs=False` leaves the input layer in place (MNIST: pixels stay put).
"""
from __future__ import annotations

import torch

from circuitry.workers.model import CoordMLP


def _n_layers(model: CoordMLP) -> int:
    return len(model.linears) + 1  # neuron layers, inputs and outputs included


def _n_positions(model: CoordMLP, layer: int) -> int:
    return model.shape[0] // model.in_fold if layer == 0 else model.shape[layer]


def _folded(w_abs: torch.Tensor, fold: int) -> torch.Tensor:
    """|W| of the first layer with the columns of one input position summed: [n_out, n_in / fold]."""
    return w_abs.reshape(w_abs.shape[0], fold, -1).sum(1)


def _scale(model: CoordMLP, linear_index: int, norm: str) -> float:
    return 1.0 / model.linears[linear_index].weight.numel() if norm == "mean" else 1.0


def importance(model: CoordMLP, layer: int) -> torch.Tensor:
    """Sum of |W| over a neuron's incoming and outgoing weights (the reference's get_top_id)."""
    score = 0.0
    if layer > 0:
        score = score + model.linears[layer - 1].weight.detach().abs().sum(1)
    if layer < len(model.linears):
        out = model.linears[layer].weight.detach().abs()
        score = score + (_folded(out, model.in_fold) if layer == 0 else out).sum(0)
    return score


def top_neurons(model: CoordMLP, layer: int, k: int) -> list[int]:
    return torch.flip(torch.argsort(importance(model, layer)), [0])[:k].tolist()


@torch.no_grad()
def swap_neurons(model: CoordMLP, layer: int, j: int, k: int) -> None:
    """Exchange the neurons at positions j and k of a layer; the function is unchanged."""
    if j == k:
        return
    idx, rev = torch.tensor([j, k]), torch.tensor([k, j])
    if layer > 0:  # incoming rows and biases
        lin = model.linears[layer - 1]
        lin.weight[idx] = lin.weight[rev].clone()
        lin.bias[idx] = lin.bias[rev].clone()
    if layer < len(model.linears):  # outgoing columns (every fold's, for the input layer)
        w = model.linears[layer].weight
        folds = model.in_fold if layer == 0 else 1
        step = w.shape[1] // folds
        cols, rev_cols = torch.cat([idx + f * step for f in range(folds)]), torch.cat([rev + f * step for f in range(folds)])
        w[:, cols] = w[:, rev_cols].clone()
        if layer == 0:
            model.in_perm[cols] = model.in_perm[rev_cols].clone()
    if layer == len(model.linears):
        model.out_perm[idx] = model.out_perm[rev].clone()


@torch.no_grad()
def swap_cost_deltas(model: CoordMLP, layer: int, j: int, norm: str = "sum") -> torch.Tensor:
    """Change of connection cost for swapping neuron j with each position k (float64, [n])."""
    delta = 0.0
    if layer > 0:  # incoming: rows of W_in against distances from this layer's positions
        a = model.linears[layer - 1].weight.detach().abs().double()
        d = model.distances64[layer - 1].double()  # [n, n_prev]
        row = d @ a[j]  # M[j, p] for every p
        col = a @ d[j]  # M[r, j] for every r
        diag = (a * d).sum(1)  # M[r, r]
        delta = delta + (row + col - row[j] - diag) * _scale(model, layer - 1, norm)
    if layer < len(model.linears):  # outgoing: columns of W_out
        c = model.linears[layer].weight.detach().abs().double()
        e = model.distances64[layer].double()  # [n_next, n]
        if layer == 0 and model.in_fold > 1:  # a position's folds share its coordinate
            c, e = _folded(c, model.in_fold), e[:, : c.shape[1] // model.in_fold]
        row = e.T @ c[:, j]  # N[j, p]
        col = c.T @ e[:, j]  # N[r, j]
        diag = (c * e).sum(0)  # N[r, r]
        delta = delta + (row + col - row[j] - diag) * _scale(model, layer, norm)
    return delta


def swap_layers(model: CoordMLP, swap_inputs: bool = True) -> range:
    return range(0 if swap_inputs else 1, _n_layers(model))


def relocate(model: CoordMLP, top_k: int = 5, norm: str = "sum", swap_inputs: bool = True) -> int:
    """One round of BIMT swaps over the layers; returns how many neurons moved."""
    moved = 0
    for layer in swap_layers(model, swap_inputs):
        for j in top_neurons(model, layer, top_k):
            k = int(torch.argmin(swap_cost_deltas(model, layer, j, norm)))
            if k != j:
                swap_neurons(model, layer, j, k)
                moved += 1
    return moved


@torch.no_grad()
def full_cost(model: CoordMLP, norm: str = "sum") -> torch.Tensor:
    """The reference's get_cc() (weight factor 1, every layer's wire length, biases included), in
    float64, summed or averaged per layer."""
    agg = torch.sum if norm == "sum" else torch.mean
    cost = torch.zeros((), dtype=torch.float64)
    for lin, dist in zip(model.linears, model.distances64):
        cost += agg(lin.weight.double().abs() * (dist.double() + model.l0))
        cost += agg(lin.bias.double().abs()) * model.l0
    return cost


def best_position_reference(model: CoordMLP, layer: int, j: int, norm: str = "sum") -> int:
    """The reference's choice: try every position, recompute the whole cost each time."""
    costs = []
    for k in range(_n_positions(model, layer)):
        swap_neurons(model, layer, j, k)
        costs.append(full_cost(model, norm))
        swap_neurons(model, layer, j, k)
    return int(torch.argmin(torch.stack(costs)))


def relocate_reference(model: CoordMLP, top_k: int = 5, norm: str = "sum", swap_inputs: bool = True) -> int:
    """A straightforward port of the reference `relocate` (full recompute per candidate)."""
    moved = 0
    for layer in swap_layers(model, swap_inputs):
        for j in top_neurons(model, layer, top_k):
            k = best_position_reference(model, layer, j, norm)
            if k != j:
                swap_neurons(model, layer, j, k)
                moved += 1
    return moved
