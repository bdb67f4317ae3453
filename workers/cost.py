"""The connection cost as a list of terms, shared by the MLP (workers.model) and the transformer
(workers.transformer_bimt).

A term is one parameter tensor with its per-entry factor (distance_weight * wire length + l0, or
l0 alone) and a scale (1 for a summed cost, 1 / the entries of its layer for BIMT's per-layer
mean). The cost is sum over terms of scale * sum(|p| * factor); its gradient, sign(p) * factor *
scale, is added to .grad in closed form, two fused ops a tensor instead of a dozen autograd nodes
(most of BIMT's per-step overhead on small nets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class CostTerm:
    param: torch.Tensor
    factor: torch.Tensor | float
    scale: float = 1.0


def total_cost(terms: Iterable[CostTerm]) -> torch.Tensor:
    cost = 0.0
    for t in terms:
        cost = cost + (t.param.abs() * t.factor).sum() * t.scale
    return cost


@torch.no_grad()
def add_cost_grad(terms: Iterable[CostTerm], lam: float) -> None:
    """Add the gradient of lam * total_cost(terms) to each term's .grad (d|w|/dw = sign(w), 0 at 0
    as autograd's abs)."""
    for t in terms:
        if isinstance(t.factor, torch.Tensor):
            t.param.grad.add_(torch.sign(t.param) * t.factor, alpha=lam * t.scale)
        else:
            t.param.grad.add_(torch.sign(t.param), alpha=lam * t.scale * t.factor)
