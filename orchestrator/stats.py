"""Paired comparisons over seeds, as the report states them.

A comparison of regime X with vanilla pairs the two models of one seed (same data, same
initialisation, same discovery settings) and works on the log of their ratio, log(x) - log(y):
- the summary is the geometric mean exp(mean log ratio) with a t-interval on the log ratios,
  exponentiated, so it is never negative and X/Y and Y/X are reciprocal;
- a pair whose ratio is undefined (a value zero, negative, NaN or infinite) is counted, never
  dropped silently;
- "the interval excludes 1" is claimed only from n >= MIN_N_FOR_CLAIM defined pairs and an
  interval of non-zero width (n identical log ratios say nothing about the spread);
- `tost` is the two one-sided tests of equivalence on the same log ratios, for "X and Y give the
  same" claims: equivalence within +-margin means the ratio lies within [1/(1+margin), 1+margin].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_N_FOR_CLAIM = 3
# Log-scale half-widths at or below this count as zero width (the spread of n equal floats is
# round-off, ~1e-16, not a measured spread).
DEGENERATE_LOG_HALF_WIDTH = 1e-12


@dataclass(frozen=True)
class RatioSummary:
    """Geometric mean of paired ratios x/y with a t-interval on log(x/y)."""

    n: int  # pairs whose ratio is defined
    n_undefined: int  # pairs with a zero, negative or non-finite value on either side
    log_mean: float  # mean log ratio (NaN when n == 0)
    log_half_width: float  # t-interval half-width of the mean log ratio (NaN when n < 2)

    @property
    def geometric_mean(self) -> float:
        return math.exp(self.log_mean) if self.n else float("nan")

    @property
    def low(self) -> float:
        return math.exp(self.log_mean - self.log_half_width)

    @property
    def high(self) -> float:
        return math.exp(self.log_mean + self.log_half_width)

    @property
    def degenerate(self) -> bool:
        """No usable interval: fewer than two pairs, a NaN width or a zero width."""
        w = self.log_half_width
        return not (math.isfinite(w) and w > DEGENERATE_LOG_HALF_WIDTH)

    @property
    def excludes_1(self) -> bool:
        """The interval lies wholly on one side of 1, from enough pairs to say so."""
        if self.n < MIN_N_FOR_CLAIM or self.degenerate:
            return False
        return self.log_mean - self.log_half_width > 0 or self.log_mean + self.log_half_width < 0


def log_ratios(x, y) -> tuple[np.ndarray, int]:
    """log(x_i / y_i) for the pairs where both are finite and > 0, and how many pairs were not."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    # difference of logs, not log of the quotient: 1e-300 / 1e-300 must not overflow or underflow
    return np.log(x[ok]) - np.log(y[ok]), int((~ok).sum())


def t_half_width(values: np.ndarray, confidence: float = CONFIDENCE) -> float:
    """Half-width of the two-sided t-interval of the mean (NaN with fewer than two values)."""
    n = len(values)
    if n < 2:
        return float("nan")
    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem


def paired_ratio(x, y, confidence: float = CONFIDENCE) -> RatioSummary:
    """Summary of x_i / y_i over pairs i (x and y in pair order)."""
    logs, undefined = log_ratios(x, y)
    mean = float(logs.mean()) if len(logs) else float("nan")
    return RatioSummary(len(logs), undefined, mean, t_half_width(logs, confidence))


@dataclass(frozen=True)
class Tost:
    n: int
    p_value: float  # the larger of the two one-sided p-values (NaN when untestable)
    margin: float
    alpha: float

    @property
    def equivalent(self) -> bool:
        return math.isfinite(self.p_value) and self.p_value < self.alpha


def tost(x, y, margin: float = 0.25, alpha: float = 0.05) -> Tost:
    """Two one-sided t-tests that the paired ratio x/y lies within [1/(1+margin), 1+margin].

    H0: mean log ratio <= -log(1+margin) or >= +log(1+margin); equivalence when both one-sided
    p-values are below alpha (the same as the (1 - 2 alpha) t-interval lying inside the bounds).
    Untestable (p NaN, not equivalent) with fewer than MIN_N_FOR_CLAIM defined pairs or zero
    spread; undefined pairs are left out, as in `paired_ratio` (whose count says how many)."""
    logs, _ = log_ratios(x, y)
    n = len(logs)
    bound = math.log1p(margin)
    sd = float(np.std(logs, ddof=1)) if n > 1 else float("nan")
    if n < MIN_N_FOR_CLAIM or not sd > DEGENERATE_LOG_HALF_WIDTH:
        return Tost(n, float("nan"), margin, alpha)
    sem = sd / math.sqrt(n)
    mean = float(logs.mean())
    p_above_low = float(stats.t.sf((mean + bound) / sem, n - 1))  # H0: mean <= -bound
    p_below_high = float(stats.t.cdf((mean - bound) / sem, n - 1))  # H0: mean >= +bound
    return Tost(n, max(p_above_low, p_below_high), margin, alpha)
