"""Attribution patching scores for every edge: EAP and EAP-IG (Hanna et al.'s 'inputs' variant).

What is differentiated (docs/design.md, "The attribution metric"): the linear restoration metric
    r(y) = sum_n <s(y_n) - s(y0_n), s(yN_n) - s(y0_n)> / sum_n ||s(yN_n) - s(y0_n)||^2
with yN the full model's clean outputs, y0 the empty circuit's (every edge ablated), both
constants, and s the scored view of an output: raw values for regression, log-softmax for
classification, only output K's column with `output=K`. r(full) = 1 and r(empty) = 0. The circuit
metric (MSE / KL to the full model) cannot be used: it is at its minimum at the full model, so its
gradient there is exactly zero; the task loss against the labels is no better on a well-fit model
(its gradient is ~0 too). r is linear in s(y), so its gradient is the same size at every point.

An edge i -> j of weight matrix l (z_j the receiver's pre-activation, h the clean activations,
h_abl the ablation's value for the sender, workers.graph) is scored
    score = sum_n (h_abl[n, i] - h[n, i]) * W[j, i] * dr/dz_j[n]
the first-order estimate of r(edge ablated) - r(full) = r(edge ablated) - 1: an edge whose
ablation undoes all of the full model's restoration scores about -1. Signed; thresholds and top-k
read |score|, as EAP-IG does.
- EAP: dr/dz at the clean input (2 forwards for the activations, 1 for the empty circuit, then 1
  forward and 1 backward).
- EAP-IG: dr/dz averaged over the inputs x_k = x~ + (k/m)(x - x~), k = 0..m-1 (m = `steps`, 5),
  x~ the ablation's input: the corrupted input (resample), zeros (zero) or the mean input over the
  discovery examples (mean). As the reference (hannamw/EAP-IG, get_scores_eap_ig) does, the path
  starts at the ablated end, k = 0, and stops one step short of the clean input. For token tasks
  the path runs between the *embedded* inputs (the reference interpolates the output of its
  'input' node, the embeddings, likewise): layer 0 here is the concatenated embeddings.
Deviations from the reference, named: its EAP-IG 'inputs' variant only patches (x~ = corrupted
input); zero and mean ablation use x~ = 0 or the mean input, the natural analogue. The reference
averages scores over examples; here they are sums, as r already divides by its sum of squares.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from circuitry.workers.graph import Problem
from circuitry.workers.names import ATTRIBUTION_METHODS

def scored_outputs(kind: str, y: torch.Tensor, out_pos: int | None) -> torch.Tensor:
    """s(y): what r compares. Raw outputs (mse) or log-softmax (kl), [N, 1] for one output."""
    s = y if kind == "mse" else F.log_softmax(y, -1)
    return s if out_pos is None else s[:, out_pos:out_pos + 1]


def restoration_metric(problem: Problem) -> Callable[[torch.Tensor], torch.Tensor]:
    """r as a function of the outputs y [N, n_out] (position order), r(full) = 1, r(empty) = 0.
    If the empty circuit's scored outputs equal the full model's on every example, r is undefined
    and this returns r = 0 everywhere (every score is then 0)."""
    if problem.kind == "logit_diff":  # r compares the per-example logit differences
        scored = lambda y: problem.metric.logit_diff(y)[:, None]  # noqa: E731
    else:
        scored = lambda y: scored_outputs(problem.kind, y, problem.out_pos)  # noqa: E731
    full, empty = scored(problem.clean[-1]), scored(problem.empty_output)
    direction = full - empty
    norm = (direction * direction).sum()
    if norm == 0:
        norm = torch.ones_like(norm)
        direction = torch.zeros_like(direction)

    def r(y: torch.Tensor) -> torch.Tensor:
        return ((scored(y) - empty) * direction).sum() / norm

    return r


def _receiver_gradients(problem: Problem, h0: torch.Tensor, r) -> list[torch.Tensor]:
    """dr/dz for every layer's pre-activation (layers 1..L), at input activations h0."""
    g = problem.graph
    zs, h = [], h0
    for l, (w, b) in enumerate(zip(g.weights, g.biases)):
        # the first pre-activation is the graph's leaf; the later ones depend on it
        z = (h @ w.T + b).requires_grad_(True) if l == 0 else h @ w.T + b
        zs.append(z)
        h = z if l == g.n_layers - 1 else F.silu(z)
    grads = torch.autograd.grad(r(h), zs)
    return [gr.detach() for gr in grads]


def path_inputs(problem: Problem, method: str, steps: int = 5) -> list[torch.Tensor]:
    """The layer-0 activations the gradient is taken at: the clean input (eap), or
    x~ + (k/steps)(x - x~), k = 0..steps-1, with x~ the ablation's input (eap-ig)."""
    clean = problem.clean[0]
    if method == "eap":
        return [clean]
    if method == "eap-ig":
        base = problem.ablated[0]  # corrupted inputs (resample), zeros or the mean input
        return [base + (k / steps) * (clean - base) for k in range(steps)]
    raise ValueError(f"unknown attribution method {method!r}: choose one of {', '.join(ATTRIBUTION_METHODS)}")


def attribution_scores(problem: Problem, method: str = "eap", steps: int = 5) -> tuple[list[torch.Tensor], int]:
    """Per-weight-matrix score tensors (shapes of the weights) and example-forwards spent."""
    g = problem.graph
    points = path_inputs(problem, method, steps)
    r = restoration_metric(problem)
    grad_sum = None
    for x in points:
        grads = _receiver_gradients(problem, x, r)
        grad_sum = grads if grad_sum is None else [a + b for a, b in zip(grad_sum, grads)]
    grads = [gr / len(points) for gr in grad_sum]
    scores = []
    for l, w in enumerate(g.weights):
        diff = problem.ablated[l] - problem.clean[l]  # [N, n_l]
        scores.append(w * (grads[l].T @ diff))  # [n_{l+1}, n_l]: sum over examples
    n = problem.n_examples
    # clean, corrupted and empty-circuit forwards, then a forward and a backward (counted as a
    # forward) per point
    return scores, n * (3 + 2 * len(points))
