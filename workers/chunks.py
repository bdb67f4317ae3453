"""How `exact` on one model splits into chunk tasks of equal work (orchestrator.scheduler fans
them out over Ray; workers.acdc.exact_scores scores any slice of the canonical edge order).

An edge's exact score costs the forward of its receiver's candidate values through every layer
after it: an edge into layer m (weight matrix m-1) costs about sum_{k>m} n_{k-1} * n_k
multiply-adds per example, plus the metric on the outputs. On a 2-256-256-2 net the 512 edges
into the first hidden layer hold half of all the work; equal edge counts gave one chunk most of
it (4 chunks on 2 workers: at best 1.6x). Boundaries fall on whole receivers, as the scorer
batches a receiver's candidates together. Pure Python: the driver calls it without torch.
"""
from __future__ import annotations

METRIC_COST = 4  # per output, in multiply-adds: the metric's share of one candidate's cost


def edge_costs(shape: list[int]) -> list[float]:
    """Estimated cost of one edge of each weight matrix (per example)."""
    costs = []
    for m in range(1, len(shape)):  # receivers in layer m
        downstream = sum(shape[k - 1] * shape[k] for k in range(m + 1, len(shape)))
        costs.append(downstream + METRIC_COST * shape[-1] + shape[m])
    return costs


def chunk_bounds(shape: list[int], n_chunks: int) -> list[tuple[int, int]]:
    """[start, stop) slices of the canonical edge order (matrix, receiver, sender), `n_chunks` of
    them at most, each about the same estimated work, cut at receiver boundaries."""
    costs = edge_costs(shape)
    receivers = []  # (first edge, edges, cost) per receiver, in canonical order
    start = 0
    for m in range(1, len(shape)):
        for _ in range(shape[m]):
            receivers.append((start, shape[m - 1], shape[m - 1] * costs[m - 1]))
            start += shape[m - 1]
    total = sum(c for _, _, c in receivers)
    bounds, lo, done = [], 0, 0.0
    for first, n, cost in receivers:
        done += cost
        if done >= total * (len(bounds) + 1) / n_chunks and len(bounds) < n_chunks - 1:
            bounds.append((lo, first + n))
            lo = first + n
    if lo < start:
        bounds.append((lo, start))
    return bounds
