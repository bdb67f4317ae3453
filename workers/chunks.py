"""How `exact` on one model splits into chunk tasks of equal work (orchestrator.scheduler fans
them out over Ray; workers.acdc.exact_scores scores any slice of the canonical edge order).

The work is counted per receiver, as `exact_scores` spends it: building the receiver's plan (the
constant parts of the downstream layers), then one row per candidate edge (its pre-activation
through the layers after it: a rank-one update into the next layer, SiLU and a matmul for each
hidden layer after that, the metric on the outputs it can move), or, for a receiver with many
candidates whose rows pass a hidden layer, about `CHEB_ROWS` rows of a fitted interpolant and a
recurrence per candidate.
The constants are in nanoseconds per example, fitted (non-negative least squares on the relative
error of the layers that hold 5% of their net's time or more) to per-layer timings of
`exact_scores` on 2-W-W-2 (W = 256, 768, 1,024, 1,536), 2-W-W-W-2 (128, 512) and 64-W-W-10 (200,
600) nets, one thread (benchmarks/orchestration.py times the chunks). Only their ratios matter;
refit them when `exact_scores` changes how it spends its work, or the chunks stop being equal.
Boundaries fall on whole receivers, as the scorer batches a receiver's candidates together.
Pure Python: the driver calls it without torch.
"""
from __future__ import annotations

from circuitry.workers.names import CHEB_MIN_CANDIDATES, CHEB_NODES

ROW = 12.9  # per candidate row: the chain, the tile's bookkeeping, the metric's reductions
OUTPUT = 1.5  # per row and output it moves (an output receiver moves one)
HIDDEN = 1.9  # per row and downstream hidden neuron (the rank-one update or a matmul's output, SiLU)
MAC = 0.10  # per row and multiply-add of the downstream matmuls
RECEIVER = 1180  # per receiver: its plan, deltas and results
WIDTH = 2.4  # per receiver and neuron of the next layer (the plan's copies of its constants)
# receivers with CHEB_MIN_CANDIDATES candidates or more whose rows pass a hidden layer are scored on
# an interpolant of ~CHEB_ROWS rows (the fewest nodes, what `exact_scores` needs on digits and
# two_moons nets) and a recurrence per candidate
CHEB_ROWS = CHEB_NODES[0]
RECURRENCE = 66  # per interpolated candidate: the interpolant's recurrence


def receiver_costs(shape: list[int]) -> list[float]:
    """Estimated cost of one receiver of each layer 1..L (per example), all its candidate edges included."""
    L = len(shape) - 1
    costs = []
    for m in range(1, L + 1):
        senders = shape[m - 1]
        hidden = sum(shape[k] for k in range(m + 1, L))  # hidden layers the rows pass
        macs = sum(shape[k] * shape[k + 1] for k in range(m + 1, L))
        interpolated = senders >= CHEB_MIN_CANDIDATES and m < L - 1
        moved = 1 if m == L else shape[-1]
        row = ROW + OUTPUT * moved + HIDDEN * hidden + MAC * macs
        rows = CHEB_ROWS * row + RECURRENCE * senders if interpolated else senders * row
        costs.append(RECEIVER + (WIDTH * shape[m + 1] if m < L else 0) + rows)
    return costs


def chunk_bounds(shape: list[int], n_chunks: int) -> list[tuple[int, int]]:
    """[start, stop) slices of the canonical edge order (matrix, receiver, sender), `n_chunks` of
    them at most, each about the same estimated work, cut at receiver boundaries."""
    costs = receiver_costs(shape)
    receivers = []  # (first edge, edges, cost) per receiver, in canonical order
    start = 0
    for m in range(1, len(shape)):
        for _ in range(shape[m]):
            receivers.append((start, shape[m - 1], costs[m - 1]))
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
