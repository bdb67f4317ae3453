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


# ---------------------------------------------------------------- the primary family (issue 29)
# Measures on a bounded scale (f, ROC AUC, generalisation gap, test accuracy) are compared by their
# paired difference x - y, with an absolute equivalence margin; counts (edges) and costs by the
# paired log ratio, with a relative one. Every test of the primary family gives a p-value; Holm's
# step-down correction holds the family-wise error at alpha across all of them.


def p_ratio(x, y) -> float:
    """Two-sided one-sample t-test p-value of the mean paired log ratio against 0 (NaN when
    untestable: fewer than MIN_N_FOR_CLAIM pairs or zero spread)."""
    logs, _ = log_ratios(x, y)
    return _p_mean_zero(logs)


def _defined_differences(x, y) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok] - y[ok]


def _p_mean_zero(values: np.ndarray) -> float:
    n = len(values)
    sd = float(np.std(values, ddof=1)) if n > 1 else float("nan")
    if n < MIN_N_FOR_CLAIM or not sd > DEGENERATE_LOG_HALF_WIDTH:
        return float("nan")
    return float(2 * stats.t.sf(abs(float(values.mean())) / (sd / math.sqrt(n)), n - 1))


@dataclass(frozen=True)
class DifferenceSummary:
    """Mean paired difference x - y with its t-interval, the test of 0 and the paired effect size."""

    n: int
    mean: float
    half_width: float
    p_value: float  # two-sided, H0: mean difference 0
    effect_size: float  # Cohen's d_z: mean difference over the differences' standard deviation

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def paired_difference(x, y, confidence: float = CONFIDENCE) -> DifferenceSummary:
    """x_i - y_i over the pairs where both are finite."""
    d = _defined_differences(x, y)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    sd = float(np.std(d, ddof=1)) if n > 1 else float("nan")
    effect = mean / sd if n > 1 and sd > 0 else float("nan")
    return DifferenceSummary(n, mean, t_half_width(d, confidence), _p_mean_zero(d), effect)


def tost_difference(x, y, margin: float, alpha: float = 0.05) -> Tost:
    """Two one-sided t-tests that the mean paired difference x - y lies within [-margin, +margin]
    (an absolute margin: 0.02 on f or ROC AUC)."""
    d = _defined_differences(x, y)
    n = len(d)
    sd = float(np.std(d, ddof=1)) if n > 1 else float("nan")
    if n < MIN_N_FOR_CLAIM or not sd > DEGENERATE_LOG_HALF_WIDTH:
        return Tost(n, float("nan"), margin, alpha)
    sem = sd / math.sqrt(n)
    mean = float(d.mean())
    p_low = float(stats.t.sf((mean + margin) / sem, n - 1))
    p_high = float(stats.t.cdf((mean - margin) / sem, n - 1))
    return Tost(n, max(p_low, p_high), margin, alpha)


def log_ratio_effect_size(x, y) -> float:
    """Cohen's d_z of the paired log ratios (mean over standard deviation; NaN with < 2 pairs)."""
    logs, _ = log_ratios(x, y)
    if len(logs) < 2:
        return float("nan")
    sd = float(np.std(logs, ddof=1))
    return float(logs.mean()) / sd if sd > 0 else float("nan")


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input's order: the k-th smallest of
    m p-values is multiplied by m - k + 1, then made non-decreasing in that order and capped at 1.
    A hypothesis is rejected at family-wise level alpha when its adjusted p-value is < alpha.
    NaN p-values (untestable comparisons) stay NaN and do not count towards m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def bootstrap_interval(values, statistic=np.mean, n_resamples: int = 10_000, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over resamples of `values` (units: seeds)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stat = np.array([statistic(v[rng.integers(0, len(v), len(v))]) for _ in range(n_resamples)])
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(stat, tail)), float(np.percentile(stat, 100 - tail))
