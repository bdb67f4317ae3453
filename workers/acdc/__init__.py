"""ACDC and exact per-edge ablation scores on the neuron graph, fast and exact.

Read in this order:
- `reference`: the definition (`removes_edge`: an edge goes when removing it raises the metric by
  less than tau), the naive loops the fast code is tested against, `EdgeResult`, `sender_orders`.
- `speculate`: `acdc`, the same circuit as `acdc_naive`, receiver by receiver in speculative rounds.
- `guesses`: the guesses a round speculates on, and reading a round's decisions off its rows.
- `downstream`: the metric for new values of one receiver's pre-activation (only what it reaches).
- `interpolant`: receivers decided on a Chebyshev interpolant of their terms instead of on rows.
- `exact`: `exact_scores`, every edge ablated alone, on the downstream evaluator.
"""
from circuitry.workers.acdc.downstream import BATCH_ELEMENTS
from circuitry.workers.acdc.exact import exact_scores
from circuitry.workers.acdc.reference import EdgeResult, acdc_naive, exact_naive, removes_edge, sender_orders
from circuitry.workers.acdc.speculate import acdc
from circuitry.workers.names import ORDERS

__all__ = ["BATCH_ELEMENTS", "EdgeResult", "ORDERS", "acdc", "acdc_naive", "exact_naive", "exact_scores",
           "removes_edge", "sender_orders"]
