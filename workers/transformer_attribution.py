"""EAP and EAP-IG on the head-level transformer graph (workers.transformer_graph).

The same definitions as the MLP path (workers.attribution, design.md "Attribution metric"): the
linear restoration metric r(y) = sum <s(y) - s(y0), s(yN) - s(y0)> / sum ||s(yN) - s(y0)||^2,
s the metric's scored view at the scored positions (log-softmax for kl, the logit difference for
logit_diff, raw outputs for mse), yN the full model's and y0 the empty circuit's outputs. Edge
s -> r is scored
    score = sum_{n, p, d} (abl[s] - out[s])[n, p, d] * dr/dx_r[n, p, d],
x_r the receiver's own input (a head's q, k and v inputs separately, as EAP-IG's
`hook_{q,k,v}_input`), the gradient taken in the full model at the clean input (EAP) or averaged
over the `input` contributions x0~ + (k/m)(x0 - x0~), k = 0..m-1 (EAP-IG, m = 5, x0~ the ablated
embeddings: corrupted, zero or mean), as hannamw/EAP-IG's get_scores_eap_ig interpolates its
'input' node. Scores are sums over examples (the reference averages; r already normalises).
"""
from __future__ import annotations

import torch

from circuitry.workers.names import ATTRIBUTION_METHODS
from circuitry.workers.transformer_graph import TransformerProblem


def restoration_metric(problem: TransformerProblem):
    m = problem.metric
    full, empty = m.scored(problem.y_full), m.scored(problem.empty_output)
    direction = full - empty
    norm = (direction * direction).sum()
    if norm == 0:
        norm, direction = torch.ones_like(norm), torch.zeros_like(direction)
    return lambda y: ((m.scored(y) - empty) * direction).sum() / norm


def receiver_gradients(problem: TransformerProblem, x0: torch.Tensor, r) -> torch.Tensor:
    """dr/dx_r for every receiver [R, N, P, D], in the full model with `input` contribution x0."""
    g = problem.graph
    L, H = g.w.n_layers, g.w.n_heads
    outs, xs = [x0], []

    def inputs(rs):
        base = torch.stack(outs[:g.n_senders[rs[0]]]).sum(0)
        x = base.unsqueeze(0) + g.const[rs].view(len(rs), 1, 1, -1)  # one tensor per receiver
        xs.append(x)
        return x

    for l in range(L):
        x = inputs(g.head_recv[l].reshape(-1).tolist()).reshape(3, H, *x0.shape)
        outs += list(g.heads(l, x[0], x[1], x[2]))
        if g.w.has_mlp:
            outs.append(g.mlp(l, inputs([int(g.head_recv[l, 2, H - 1]) + 1])[0]))
    y = g.unembed(inputs([len(g.receivers) - 1])[0])
    grads = torch.autograd.grad(r(y), xs)
    return torch.cat([gr.detach() for gr in grads])


def attribution_scores(problem: TransformerProblem, method: str = "eap", steps: int = 5) -> tuple[torch.Tensor, int]:
    """Scores [R, S] (0 off the graph's real edges) and example-forwards spent."""
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}: choose one of {', '.join(ATTRIBUTION_METHODS)}")
    g = problem.graph
    clean = problem.x0
    if method == "eap":
        points = [clean]
    else:
        base = problem.ablated[0]
        points = [base + (k / steps) * (clean - base) for k in range(steps)]
    r = restoration_metric(problem)
    with torch.enable_grad():
        grad = sum(receiver_gradients(problem, x.detach().requires_grad_(True), r) for x in points) / len(points)
    diff = (problem.ablated - problem.clean).reshape(len(g.senders), -1)
    scores = (grad.reshape(len(g.receivers), -1) @ diff.T) * g.real
    return scores, problem.n_examples * (3 + 2 * len(points))
