"""Attribution patching scores for every edge: EAP and EAP-IG (Hanna et al.'s 'inputs' variant).

An edge i -> j of weight matrix l is scored by the first-order estimate of what ablating it does:
    score = sum_n (h_abl[n, i] - h[n, i]) * W[j, i] * dLoss/dz_j[n]
with h the clean activations, h_abl the ablation's value for the sender (workers.graph) and z_j the
receiver's pre-activation. EAP takes the gradient at the clean input (2 forwards + 1 backward);
EAP-IG averages it over `steps` inputs interpolated from the ablation's input baseline to the
clean input (alpha = k/steps, k = 1..steps).

Why the task loss and not the circuit metric: the metric compares the circuit with the full
model's own clean output, so at the clean point it is at its minimum (0) and its gradient is
exactly zero, which would make every score 0. The attribution methods therefore differentiate the
task loss against the labels (MSE for regression, cross-entropy for classification; restricted to
one output with `output`: that column's squared error, or the binary cross-entropy of
"class == output"). Scores are signed estimates of loss(ablated) - loss(clean); thresholds and
top-k use |score| as EAP-IG does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.graph import Problem


def task_loss(kind: str, y: torch.Tensor, labels: torch.Tensor, out_pos: int | None) -> torch.Tensor:
    """Mean loss over examples; `labels` in position order (regression) or as class positions."""
    if kind == "mse":
        if out_pos is None:
            return ((y - labels) ** 2).mean()
        return ((y[:, out_pos] - labels[:, out_pos]) ** 2).mean()
    if out_pos is None:
        return F.cross_entropy(y, labels)
    lp = F.log_softmax(y, -1)
    others = torch.cat([lp[:, :out_pos], lp[:, out_pos + 1:]], 1)
    target = (labels == out_pos).to(y.dtype)
    return -(target * lp[:, out_pos] + (1 - target) * torch.logsumexp(others, 1)).mean()


def _receiver_gradients(problem: Problem, h0: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """dLoss/dz for every layer's pre-activation (layers 1..L), at input activations h0."""
    g = problem.graph
    zs, h = [], h0
    for l, (w, b) in enumerate(zip(g.weights, g.biases)):
        # the first pre-activation is the graph's leaf; the later ones depend on it
        z = (h @ w.T + b).requires_grad_(True) if l == 0 else h @ w.T + b
        zs.append(z)
        h = z if l == g.n_layers - 1 else F.silu(z)
    loss = task_loss(problem.kind, h, labels, problem.out_pos)
    grads = torch.autograd.grad(loss, zs)
    return [gr.detach() for gr in grads]


def _input_baseline(problem: Problem) -> torch.Tensor:
    """Where the integration path starts: the ablation's input (corrupted inputs for resample,
    zeros or the mean input for zero/mean ablation)."""
    return problem.ablated[0]


def attribution_scores(problem: Problem, labels: torch.Tensor, method: str = "eap", steps: int = 5) -> tuple[list[torch.Tensor], int]:
    """Per-weight-matrix score tensors (shapes of the weights) and example-forwards spent."""
    if labels is None:
        raise ValueError("attribution methods need labels: give `labels` in --data (or use the task's own test split)")
    g = problem.graph
    clean_h0 = problem.clean[0]
    if method == "eap":
        points = [clean_h0]
    elif method == "eap-ig":
        base = _input_baseline(problem)
        points = [base + (k / steps) * (clean_h0 - base) for k in range(1, steps + 1)]
    else:
        raise ValueError(f"unknown attribution method {method!r}")
    grad_sum = None
    for x in points:
        grads = _receiver_gradients(problem, x, labels)
        grad_sum = grads if grad_sum is None else [a + b for a, b in zip(grad_sum, grads)]
    grads = [gr / len(points) for gr in grad_sum]
    scores = []
    for l, w in enumerate(g.weights):
        diff = problem.ablated[l] - problem.clean[l]  # [N, n_l]
        scores.append(w * (grads[l].T @ diff))  # [n_{l+1}, n_l]: sum over examples
    n = problem.n_examples
    # clean + corrupted forwards, then one forward and one backward (counted as a forward) per point
    return scores, n * (2 + 2 * len(points))
