"""Circuits at a target faithfulness: the search over ACDC's tau (or a score method's top-k)
that finds the sparsest circuit whose faithfulness f reaches a target on the discovery examples.

    s = search_tau(probe, target=0.95, scale=metric_empty)   # probe(tau) -> Probe (one ACDC run)
    s = search_top_k(probe, target=0.95, n_edges=E)          # probe(k) -> Probe (one forward)

ACDC (`search_tau`): the largest tau whose circuit reaches f >= target, as a bracket
tau_found < tau_above with f(tau_found) >= target > f(tau_above) and tau_above / tau_found <=
`ratio` (1.2). A larger tau removes more edges, so f tends to fall as tau grows, but nothing
makes f(tau) monotone (a removal can improve the metric, and ACDC's greedy path changes with
tau). The search is a bracketing phase in log tau (steps of `factor` from a start on the
metric's own scale: metric_empty, the metric of the empty circuit) and then bisection in log
tau, keeping f(lo) >= target > f(hi) at every step. The bracket is therefore a *local* one: a
crossing of the target, the first one the bisection lands in, not necessarily the largest tau
anywhere with f >= target. Every probe (tau, f, edges) is recorded.

The circuit returned is the best one tried, not the bracket's last: the sparsest circuit of any
probe that reaches the target, and where none does, the most faithful one. Because f and the edge
count are not monotone in tau (on transformer graphs especially), a probe made while bracketing can
be sparser than the bisection's final lower end; `found` is that probe's tau, `above` stays the
bracket's upper end. Where the bracket's lower end ties with the best, it is the one returned.

Where no tau on the way down reaches the target, tau = 0 is tried (it removes only edges whose
removal lowers the metric); if even that falls short, `reached` is False and the tau = 0 circuit is
the answer (unless a probe on the way down was more faithful). A tau above which nothing is kept (f
= 0 < target) always exists, so the upper end is found unless f stays undefined (NaN counts as below
the target).

Score methods (`search_top_k`): the smallest k whose top-k circuit (largest |score|) reaches
the target, by bisection on k between k = 0 (the empty circuit, f = 0) and every edge (f = 1),
keeping f(k_below) < target <= f(k_found); a local answer in the same sense.

Pure logic (no torch, no Ray, no MLflow): the probes are the caller's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

# The bracket's widest accepted ratio tau_above / tau_found.
RATIO = 1.2
# Bracketing step in tau (a factor), and how far below the metric's scale the search goes
# before it tries tau = 0 (below ~1e-12 of the metric, increases are rounding).
FACTOR = 10.0
FLOOR = 1e-12


@dataclass
class Probe:
    """One circuit tried: its faithfulness on the discovery examples, its edges, and whatever the
    caller needs to keep the circuit (`result`, not recorded)."""

    f: float
    edges: int
    result: Any = None


@dataclass
class Search:
    target: float
    found: float  # tau_found (acdc) or k_found (score methods): the point of the best circuit tried
    above: float | None  # the bracket's tau_above, or k_below for top-k (None: no such point was needed)
    reached: bool  # f(found) >= target
    result: Any  # the probe result at `found` (the circuit to write)
    tried: list[dict] = field(default_factory=list)  # every probe, in the order made

    def record(self) -> list[dict]:
        return [dict(t) for t in self.tried]


def _meets(f: float, target: float) -> bool:
    return not math.isnan(f) and f >= target


class _Prober:
    """`probe` memoised: each point (a tau or a k, recorded under `key`) runs once, every run is
    recorded in order, and `self(x)` says whether x's circuit reaches the target."""

    def __init__(self, probe: Callable[[Any], Probe], target: float, key: str, max_probes: int, name: str):
        self.probe, self.target, self.key, self.max_probes, self.name = probe, target, key, max_probes, name
        self.results: dict = {}
        self.tried: list[dict] = []

    def __call__(self, x) -> bool:
        if x not in self.results:
            if len(self.tried) >= self.max_probes:
                raise RuntimeError(f"{self.name} search made {self.max_probes} probes without a bracket")
            p = self.results[x] = self.probe(x)
            self.tried.append({self.key: x, "f": p.f, "edges": p.edges})
        return _meets(self.results[x].f, self.target)

    def best(self, preferred):
        """The point of the best circuit tried (module doc): the fewest edges among those that reach
        the target, and where none does, the highest f (NaN lowest). `preferred` (the bracket's
        answer) wins a tie; other ties go to the higher f, then the fewer edges, then the earlier."""
        f = {x: -math.inf if math.isnan(p.f) else p.f for x, p in self.results.items()}
        meeting = [x for x in self.results if _meets(self.results[x].f, self.target)]
        if meeting:
            fewest = min(self.results[x].edges for x in meeting)
            pool = [x for x in meeting if self.results[x].edges == fewest]
        else:
            pool = [x for x in self.results if f[x] == max(f.values())]
        if preferred in pool:
            return preferred
        return min(pool, key=lambda x: (-f[x], self.results[x].edges))  # min keeps the earliest of equals

    def search(self, found, above) -> Search:
        found = self.best(found)
        return Search(self.target, found, above, _meets(self.results[found].f, self.target),
                      self.results[found].result, self.tried)


def start_tau(target: float, scale: float, n_edges: int) -> float:
    """A first tau on the metric's scale: if the (1 - target) share of the empty circuit's metric
    that may be lost were spread over sqrt(E) removals (between a sparse circuit's few and a
    dense one's many). Only a start: the bracketing phase moves from here."""
    return abs(scale) * max(1.0 - target, 0.01) / math.sqrt(max(n_edges, 1))


def search_tau(probe: Callable[[float], Probe], target: float, scale: float, n_edges: int = 1,
               ratio: float = RATIO, factor: float = FACTOR, floor: float = FLOOR,
               max_probes: int = 80, defined: bool = True) -> Search:
    """The bracket of ACDC thresholds (module doc). `probe(tau)` runs ACDC at tau; `scale` is the
    metric's scale (metric_empty) that the first tau and the floor are taken from. `defined`:
    False when f is undefined for every circuit (its denominator, the empty circuit's metric
    against the full model's, is rounding: a dead net), so that no tau can reach the target and
    only tau = 0 runs (the walk down would run ACDC ~10 times for the same answer)."""
    if not 0 < target <= 1:
        raise ValueError(f"target faithfulness must be in (0, 1], got {target}")
    run = _Prober(probe, target, "tau", max_probes, "tau")
    if not defined:
        run(0.0)
        return run.search(0.0, None)
    scale = abs(scale) if math.isfinite(scale) and scale != 0 else 1.0
    tau = start_tau(target, scale, n_edges)
    lowest = floor * scale
    # bracketing: walk by `factor` until one tau meets the target and the next one up does not
    if run(tau):
        lo = tau
        while True:
            hi = lo * factor
            if not run(hi):
                break
            lo = hi
    else:
        hi = tau
        while True:
            lo = hi / factor
            if lo < lowest:  # nothing positive reaches it: tau = 0 keeps every edge that matters
                run(0.0)
                return run.search(0.0, hi)
            if run(lo):
                break
            hi = lo
    # bisection in log tau, keeping f(lo) >= target > f(hi)
    while hi / lo > ratio:
        mid = math.sqrt(lo * hi)
        if run(mid):
            lo = mid
        else:
            hi = mid
    return run.search(lo, hi)


def search_top_k(probe: Callable[[int], Probe], target: float, n_edges: int, max_probes: int = 80) -> Search:
    """The smallest k whose top-k circuit reaches the target (module doc); `above` is k_below,
    the k just under it that does not (None when k = 0 already does)."""
    if not 0 < target <= 1:
        raise ValueError(f"target faithfulness must be in (0, 1], got {target}")
    run = _Prober(probe, target, "k", max_probes, "top-k")
    if not run(n_edges):  # even the whole model falls short (f undefined, or a target above 1)
        return run.search(n_edges, None)
    if run(0):
        return run.search(0, None)
    lo, hi = 0, n_edges  # f(lo) < target <= f(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid):
            hi = mid
        else:
            lo = mid
    return run.search(hi, lo)
