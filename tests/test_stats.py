"""orchestrator.stats against scipy and hand-computed values, pathological pairs included."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from circuitry.orchestrator.stats import paired_ratio, tost


def test_geometric_mean_and_t_interval_on_the_log_ratios():
    x, y = [2.0, 4.0, 8.0], [1.0, 1.0, 1.0]  # log ratios ln2 * (1, 2, 3)
    r = paired_ratio(x, y)
    assert (r.n, r.n_undefined) == (3, 0)
    assert r.geometric_mean == pytest.approx(4.0)
    logs = np.log(np.array(x) / np.array(y))
    low, high = sps.t.interval(0.95, 2, loc=logs.mean(), scale=sps.sem(logs))
    assert (r.low, r.high) == (pytest.approx(math.exp(low)), pytest.approx(math.exp(high)))
    # by hand: half-width t(0.975, 2) * sd / sqrt(3), sd = ln 2
    assert r.log_half_width == pytest.approx(4.302652729911275 * math.log(2) / math.sqrt(3))


def test_ratio_interval_is_positive_where_a_mean_of_ratios_goes_negative():
    x, y = [0.01, 0.2, 0.5], [1.0, 1.0, 1.0]
    ratios = np.array(x) / np.array(y)
    arithmetic_low = ratios.mean() - sps.t.ppf(0.975, 2) * sps.sem(ratios)
    assert arithmetic_low < 0  # the reviewer's "0.237 ± 0.35"
    r = paired_ratio(x, y)
    assert 0 < r.low < r.geometric_mean < r.high
    assert r.geometric_mean == pytest.approx((0.01 * 0.2 * 0.5) ** (1 / 3))


def test_swapping_the_sides_gives_the_reciprocal():
    x, y = [1.0, 3.0, 2.5, 0.7], [2.0, 1.0, 1.5, 0.9]
    a, b = paired_ratio(x, y), paired_ratio(y, x)
    assert a.geometric_mean == pytest.approx(1 / b.geometric_mean)
    assert (a.low, a.high) == (pytest.approx(1 / b.high), pytest.approx(1 / b.low))


def test_undefined_pairs_are_counted_not_used():
    # inf numerator, zero denominator (inf ratio), zero numerator, negative, NaN, zero over zero
    x = [2.0, math.inf, 5.0, 0.0, -1.0, math.nan, 0.0, 3.0]
    y = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.5]
    r = paired_ratio(x, y)
    assert (r.n, r.n_undefined) == (2, 6)
    assert r.geometric_mean == pytest.approx(2.0)


def test_a_near_zero_denominator_is_a_huge_ratio_with_a_wide_interval():
    r = paired_ratio([1.0, 1.0, 1.0], [1e-17, 1.0, 1.0])
    assert r.n == 3
    assert r.geometric_mean == pytest.approx(1e17 ** (1 / 3))  # the arithmetic of the data, no clipping
    assert r.low < 1 < r.high and not r.excludes_1


def test_zero_width_interval_does_not_exclude_1():
    assert paired_ratio([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]).degenerate
    assert not paired_ratio([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]).excludes_1
    # equal ratios up to round-off (0.1 + 0.2 != 0.3): a width of ~1e-16 is still zero width
    r = paired_ratio([0.1 + 0.2, 0.3, 0.3], [0.1, 0.1, 0.1])
    assert r.log_half_width < 1e-12 and r.degenerate and not r.excludes_1


def test_excludes_1_needs_three_pairs():
    two = paired_ratio([2.0, 2.2], [1.0, 1.0])
    assert two.low > 1  # the interval of two pairs lies above 1 ...
    assert not two.excludes_1  # ... but two seeds are not enough to say so
    three = paired_ratio([2.0, 2.2, 1.9], [1.0, 1.0, 1.0])
    assert three.excludes_1 and three.low > 1
    below = paired_ratio([0.5, 0.45, 0.55], [1.0, 1.0, 1.0])
    assert below.excludes_1 and below.high < 1
    assert not paired_ratio([0.5, 1.5, 1.0], [1.0, 1.0, 1.0]).excludes_1
    one = paired_ratio([2.0], [1.0])
    assert one.n == 1 and math.isnan(one.log_half_width) and not one.excludes_1
    none = paired_ratio([0.0], [1.0])
    assert none.n == 0 and math.isnan(none.geometric_mean)


def test_tost_matches_two_one_sided_scipy_t_tests():
    x = [1.01, 0.99, 1.03, 1.0, 0.97]
    y = [1.0] * 5
    logs = np.log(np.array(x) / np.array(y))
    bound = math.log(1.25)
    p_low = sps.ttest_1samp(logs, -bound, alternative="greater").pvalue
    p_high = sps.ttest_1samp(logs, bound, alternative="less").pvalue
    t = tost(x, y, margin=0.25)
    assert t.p_value == pytest.approx(max(p_low, p_high)) and t.equivalent
    # equivalence <=> the 90% t-interval lies inside [1/1.25, 1.25]
    low, high = sps.t.interval(0.90, len(logs) - 1, loc=logs.mean(), scale=sps.sem(logs))
    assert -bound < low and high < bound


def test_tost_refuses_equivalence_on_spread_few_pairs_or_zero_width():
    spread = tost([0.7, 1.3, 1.0, 0.9], [1.0] * 4)
    assert 0.05 < spread.p_value < 1 and not spread.equivalent
    shifted = tost([1.3, 1.32, 1.31], [1.0] * 3)  # tight but outside +-25%
    assert not shifted.equivalent
    assert math.isnan(tost([1.0, 1.01], [1.0, 1.0]).p_value)  # n = 2
    assert not tost([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]).equivalent  # zero width: untestable


def test_holm_against_a_hand_computation():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone)
    from circuitry.orchestrator.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # an untestable comparison stays NaN and does not count towards m; adjusted p never above 1
    adj = holm([0.2, float("nan"), 0.6])
    assert adj[0] == pytest.approx(0.4) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.6)
    assert holm([0.5, 0.9, 0.7]) == pytest.approx([1.0, 1.0, 1.0])
    # rejections at 0.05: Holm keeps what Bonferroni keeps, and more
    p = [0.001, 0.013, 0.02, 0.5]
    assert [a < 0.05 for a in holm(p)] == [True, True, True, False]
    assert [q * len(p) < 0.05 for q in p] == [True, False, False, False]


def test_paired_difference_is_scipys_paired_t_test_with_its_effect_size():
    from circuitry.orchestrator.stats import paired_difference, tost_difference

    x = np.array([0.71, 0.75, 0.69, 0.80, 0.77, 0.72])
    y = np.array([0.60, 0.66, 0.64, 0.70, 0.61, 0.69])
    d = paired_difference(x, y)
    ref = sps.ttest_rel(x, y)
    assert d.n == 6 and d.mean == pytest.approx((x - y).mean()) and d.p_value == pytest.approx(ref.pvalue)
    assert d.effect_size == pytest.approx((x - y).mean() / (x - y).std(ddof=1))
    lo, hi = sps.t.interval(0.95, 5, loc=(x - y).mean(), scale=sps.sem(x - y))
    assert (d.low, d.high) == pytest.approx((lo, hi))
    # equivalence within +-0.02 fails for a difference of ~0.09; within +-0.2 it holds
    assert not tost_difference(x, y, 0.02).equivalent and tost_difference(x, y, 0.2).equivalent
    assert math.isnan(paired_difference([1.0, float("nan")], [0.5, 0.2]).p_value)  # one pair: untestable


def test_bootstrap_interval_covers_the_mean_and_is_seeded():
    from circuitry.orchestrator.stats import bootstrap_interval

    v = np.arange(10.0)
    lo, hi = bootstrap_interval(v, n_resamples=2000, seed=1)
    assert lo < 4.5 < hi and (lo, hi) == bootstrap_interval(v, n_resamples=2000, seed=1)
    assert 2 < lo and hi < 7  # about mean +- 2 standard errors (0.96 each)
