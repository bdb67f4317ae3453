"""Receivers decided on an interpolant of their metric terms instead of on rows.

On a CPU, a receiver with many candidates whose rows pass a hidden layer (a digits net's first
layer: 64 candidates, a 784-input net's: 784, each row a SiLU over a hidden layer per example) is
decided on an interpolant of its terms (`Interpolant`, `interpolates`): while j's edges are
decided, example n's term is a smooth function of z_j[n] alone, so exact rows at a few dozen
Chebyshev nodes of an interval that holds the states the receiver will be tried at give every
candidate's terms to rounding; a candidate then costs a recurrence, not a pass through the layers.
The interval: where the first round holds every candidate, the states its guesses reach (narrow,
few nodes); else, or once a later round leaves it, every state the remaining candidates can reach
(wide, more nodes). A candidate whose increase is within the interpolant's error estimate of tau
is decided from its exact rows, so decisions are the naive ones (an estimate of the error, not a
proof: below it, decisions are rounding in any implementation); the receiver's final terms are
the interpolant's.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch

from circuitry.workers.names import CHEB_MIN_CANDIDATES, CHEB_NODES

if TYPE_CHECKING:
    from circuitry.workers.acdc.downstream import Downstream, Plan

# A receiver whose rows pass through a hidden layer and that has at least CHEB_MIN_CANDIDATES
# non-silent candidates is decided on an interpolant of its terms (`Interpolant`): Chebyshev
# nodes tried in turn (CHEB_NODES, workers.names), accepted when the last coefficients are below
# CHEB_TOLERANCE of the terms.
CHEB_TOLERANCE = 1e-13


class Interpolant:
    """Each example's metric term as a function of receiver j's pre-activation, interpolated:
    the term of example n depends on z_j[n] alone while j's edges are decided (module doc) and is
    analytic (SiLU, matmuls, log-sum-exp), so its Chebyshev interpolant on C nodes of an interval
    [lo_n, hi_n] reproduces it there to rounding once the coefficients have decayed (the caller
    picks intervals that hold the states it asks about, `covers` checks them). Fitting
    costs C exact rows instead of one per candidate; a candidate then costs a Clenshaw recurrence
    (2 C elementwise ops a row, no downstream layers). `margin` bounds an increase's error: 2 x
    (10 x the last coefficients + 4 ulps of the terms), averaged over examples; an estimate, not
    a proof (the decay of an analytic function's coefficients), and the caller decides every
    candidate within it of tau from exact rows."""

    def __init__(self, coef: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, margin: float):
        self.coef, self.lo, self.hi, self.margin = coef.unbind(), lo, hi, margin
        self.mid, half = (lo + hi) / 2, (hi - lo) / 2
        # the recurrence's argument 2 t = 2 (x - mid) / half, as (x - mid) * scale; a point interval
        # (half 0): t = 0, the constant term
        self.scale = torch.where(half > 0, 2 / half, torch.zeros_like(half))

    @staticmethod
    def fit(down: Downstream, j: int, plan: Plan, lo: torch.Tensor, hi: torch.Tensor, counts=CHEB_NODES):
        """The interpolant of receiver j's terms on the per-example intervals [lo, hi] ([N] each)
        with the fewest nodes of `counts` that reach the tolerance, and the example-forwards spent;
        (None, spent) when none does."""
        N, spent = lo.shape[0], 0
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        for c in counts:
            nodes, transform = _chebyshev(c, lo.device)
            _, terms = down.evaluate(j, torch.addcmul(mid, half, nodes[:, None]), plan)  # [c, N]
            spent += c * N
            coef = transform @ terms
            size = terms.abs().amax(0)
            tail = coef[-3:].abs().amax(0)
            if bool((tail <= CHEB_TOLERANCE * size.clamp(min=1.0)).all()):
                err = 10 * tail + 4 * torch.finfo(torch.float64).eps * size
                return Interpolant(coef, lo, hi, 2 * float(err.mean())), spent
        return None, spent

    def covers(self, x: torch.Tensor) -> bool:
        """Whether every state x [..., N] lies in the intervals it was fitted on (outside them a
        Chebyshev series is no interpolant)."""
        return bool(((x >= self.lo) & (x <= self.hi)).all())

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Metric [B] and per-example terms [B, N] at pre-activations x [B, N] (Clenshaw)."""
        t2 = (x - self.mid).mul_(self.scale)
        c = self.coef
        b1, b2 = c[-1].expand_as(x), 0.0
        for k in range(len(c) - 2, 0, -1):
            b1, b2 = torch.addcmul(c[k] - b2, t2, b1), b1
        per = torch.addcmul(c[0] - b2, t2, b1, value=0.5)
        return per.mean(-1), per


@functools.cache
def _chebyshev(c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The c Chebyshev nodes of the first kind on [-1, 1] and the matrix that turns values there
    into the coefficients of the interpolant's series (the discrete cosine transform; the constant
    term halved), computed once per size and device."""
    i = torch.arange(c, dtype=torch.float64, device=device)
    transform = torch.cos(math.pi * i[:, None] * (i[None] + 0.5) / c) * (2.0 / c)
    transform[0] /= 2
    return torch.cos(math.pi * (i + 0.5) / c), transform


def interpolates(down: Downstream, candidates: int) -> bool:
    """Whether a receiver is decided on an `Interpolant`: many candidates whose rows pass a hidden
    layer, on a CPU (on a GPU the rows are cheap and the recurrence's many small kernels are not:
    there the 784-input net's ACDC ran slower on interpolants than on rows)."""
    return candidates >= CHEB_MIN_CANDIDATES and down.m < down.L - 1 and down.device.type == "cpu"
