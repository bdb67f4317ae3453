"""Guesses for speculative rounds, and reading a round's decisions off its rows.

`speculate.acdc` evaluates a receiver's candidates in rounds: it guesses each decision, evaluates
the chain of states those guesses imply at once and accepts decisions up to and including the
first one that contradicts its guess. Guesses only affect speed, never the circuit.
- Guesses come from a per-example quadratic model of the metric in the receiver's pre-activation
  (`metric_model`: the metric is a mean over examples of terms that each depend on that example's
  value only, so two probe rows give every candidate's predicted increase, interactions between
  the window's removals included: `Quadratic`); for receivers that feed the outputs themselves
  the model's derivatives are closed-form (`Downstream.derivatives`) and cost no rows, and an
  output receiver under KL is predicted exactly (`ExactOutput`: one round per receiver however
  much its removals interact). `guess` finds the sequential guesses by whole-window sweeps.
- A round's decisions are read off its rows in one pass of tensor ops (`measure_round`), not in
  a Python loop over candidates; `next_window` sizes the next round.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from circuitry.workers.acdc.reference import removes_edge


def next_window(window: int, B: int, accepted: int, chunk: int) -> int:
    """The most candidates to speculate about next (`guess` may stop earlier, where its sweeps
    disagree): a contradicted guess wastes the rest of its batch, so after one aim at about twice the
    run of correct guesses just seen; an all-correct batch earns a batch twice as large."""
    return min(chunk, 2 * window if accepted == B else max(8, 2 * accepted))


def metric_model(lo: torch.Tensor, mid: torch.Tensor, hi: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivatives, per example, of the metric (divided by N) with respect to the
    receiver's pre-activation, from the per-example terms ([N] each) at state - eps, state and
    state + eps by central differences.

    Each example's metric term depends on the receiver's pre-activation for that example only, so
    the metric is a mean of 1-D functions and this per-example quadratic model predicts the
    increase of any candidate state cheaply. It only makes guesses: every decision is measured."""
    n = lo.shape[0]
    return (hi - lo).div_(eps * (2 * n)), (hi + lo).sub_(mid, alpha=2).div_(eps.square().mul_(n))



def removed_before(deltas: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Row k: the summed deltas [.., N] of the guessed removals g among candidates 0..k-1 (how far
    a chain of removals has moved the receiver when candidate k is tried)."""
    taken = g[:, None] * deltas
    return torch.cumsum(taken, 0).sub_(taken)


def _tried_from(g: torch.Tensor) -> torch.Tensor:
    """Per candidate k of a chain with guessed removals g [B]: where the state it is tried from was
    evaluated, as an index into [the chain's start, row 0, row 1, ...]: the row of the last
    guessed removal before k, plus one, or 0 (none)."""
    removal_before = F.pad(g[:-1], (1, 0))  # row k - 1 was a guessed removal
    return torch.where(removal_before, torch.arange(g.shape[0], device=g.device), 0).cummax(0).values


class Quadratic:
    """Predicted increases from the per-example quadratic model (d1, d2) of `metric_model`, taken
    `shift` [N] away from the window's start state: pred_k = own_k + <deltas_k * d2, the summed
    deltas of the earlier guessed removals>."""

    def __init__(self, model, shift: torch.Tensor, deltas: torch.Tensor):
        d1, d2 = model
        self.own = deltas @ (d1 + d2 * shift) + 0.5 * (deltas * deltas) @ d2
        self.curv, self.deltas = deltas * d2, deltas

    def __call__(self, g: torch.Tensor | None, first: int = 0) -> torch.Tensor:
        if g is None:
            return self.own[first:]
        moved = removed_before(self.deltas, g)[first:]
        return (self.curv[first:] * moved).sum(1).add_(self.own[first:])


class ExactOutput:
    """Predicted increases for an output receiver j under KL, exact: each example's term is
    logaddexp(u, log R) - p_j u + const in its shifted logit u (R: the other outputs' sum of exp,
    which stay as they are), so the chain's states are evaluated for the cost of a few ops per
    element, and the guesses are the sequential decisions themselves (up to rounding) once the
    sweeps agree: an output receiver takes one round, however much its removals interact."""

    def __init__(self, u0: torch.Tensor, log_rest: torch.Tensor, p: torch.Tensor, deltas: torch.Tensor):
        self.u0, self.log_rest, self.p, self.deltas = u0, log_rest, p, deltas

    def _terms(self, u):
        return torch.logaddexp(u, self.log_rest) - self.p * u

    def __call__(self, g: torch.Tensor | None, first: int = 0) -> torch.Tensor:
        d = self.deltas[first:]
        u = self.u0 if g is None else self.u0 + g[:first].to(d.dtype) @ self.deltas[:first]  # the state before `first`
        if g is None:
            return self._terms(u + d).mean(1) - self._terms(u).mean()
        met_after = self._terms(removed_before(d, g[first:]).add_(u).add_(d)).mean(1)
        # the state candidate k is tried from is the one after the last guessed removal before it
        # (or u), whose metric is already at hand: one pass of logaddexp a sweep, not two
        met = torch.cat([self._terms(u).mean().view(1), met_after])
        return met_after - met[_tried_from(g[first:])]


def guess(predict, tau: float, has_known: torch.Tensor, known: torch.Tensor,
           sweeps: int = 4) -> tuple[torch.Tensor, int]:
    """Sequential guesses (bool [B]) for a window of B candidates: `predict(g, first)` gives the
    predicted increases of candidates first.. when the earlier candidates' removals are `g` (None:
    none of them; `Quadratic`, `ExactOutput`). `known` holds decisions measured earlier (where
    `has_known`). Also returns how many candidates to evaluate (the agreed prefix, below). The
    window is not cut at predictions close to tau: a wrong guess there costs the rest of the
    window's rows, but a cut costs a round for every near-tau candidate, and rounds (a fixed
    cost of op dispatch each) are what dense nets spend their time on.

    The sequential guesses g_k = [pred_k(g_<k) < tau] are found by sweeps of window tensor ops:
    each sweep recomputes the predictions from the previous sweep's guesses, and the prefix on
    which two sweeps agree is exactly the sequential answer (g_0 is right after one sweep, and
    each g_k is right once the guesses before it are), so a sweep starts where that prefix ends
    (an output receiver's exact sweeps, ~10 a window on a dense digits net, cost a quarter less);
    the window is cut there. (The quadratic model's interactions as one [B, B] matrix, a sweep as
    a matrix-vector product, is fewer ops but more arithmetic: no faster on a dense digits net.)"""
    B = known.shape[0]
    g = torch.where(has_known, known, removes_edge(predict(None), tau))
    agreed = 0  # the guesses before this are the sequential answer
    for _ in range(sweeps):
        tail = torch.where(has_known[agreed:], known[agreed:], removes_edge(predict(g, agreed), tau))
        diff = torch.nonzero(tail != g[agreed:])
        g[agreed:] = tail
        if diff.numel() == 0:
            return g, B
        agreed += int(diff[0, 0]) + 1  # the new guesses are right up to and including their first change
    return g[:agreed], agreed


def measure_round(met: torch.Tensor, g: torch.Tensor, met_now: float, tau: float):
    """The decisions a round's metrics `met` [B] imply, in one pass of tensor ops: row k was
    evaluated at the chain state with the guessed removals `g` before it, so its increase is
    measured against the row of the last guessed removal before k (or `met_now`, the metric at the
    chain's start). Returns the increases [B], the measured removals [B] (exact up to and including
    the first one that contradicts its guess, the next round's guesses after it), how many
    decisions are exact (B when no guess was contradicted) and whether a guess was."""
    B = met.shape[0]
    inc = met - torch.cat([met.new_tensor([met_now]), met])[_tried_from(g)]
    remove = removes_edge(inc, tau)
    wrong = torch.nonzero(remove != g)
    if wrong.numel() == 0:
        return inc, remove, B, False
    return inc, remove, int(wrong[0, 0]) + 1, True
