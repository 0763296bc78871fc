"""bench.report.stats: t-intervals of the mean and the paired comparison."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from bench.report.stats import compare_methods, matched_pairs, mean_ci, paired_test, summarize


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=1, max_size=8))
def test_ci_contains_the_mean(values):
    s = summarize(values)
    assert s.n == len(values)
    assert s.ci_low <= s.mean + 1e-12 and s.mean - 1e-12 <= s.ci_high


def test_ci_is_scipys_one_sample_t_interval():
    """The independent reference: scipy's t-test's own confidence interval of the mean."""
    for values in ([0.80, 0.82, 0.84], [0.851, 0.8532, 0.86, 0.849], [0.5, 0.9]):
        want = sps.ttest_1samp(values, 0.0).confidence_interval(0.95)
        assert mean_ci(values) == pytest.approx((want.low, want.high), rel=1e-12)


def test_three_seeds_give_an_interval_wider_than_their_range():
    """What issue 17 asked of the statistics: over 3 seeds a percentile bootstrap lies inside the
    seeds' range (here [0.80, 0.84]); the t-interval is 0.82 -/+ 4.30 * 0.02 / sqrt(3)."""
    lo, hi = mean_ci([0.80, 0.82, 0.84])
    assert lo == pytest.approx(0.82 - 4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert lo < 0.80 and hi > 0.84


def test_summary_matches_numpy_and_edge_cases():
    s = summarize([0.8, 0.82, 0.79, None, float("nan")])
    assert s.n == 3 and s.mean == pytest.approx(np.mean([0.8, 0.82, 0.79]))
    assert s.std == pytest.approx(np.std([0.8, 0.82, 0.79], ddof=1))
    assert s.ci_low < s.mean < s.ci_high
    one = summarize([0.7])
    assert (one.std, one.ci_low, one.ci_high) == (0.0, 0.7, 0.7)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_ci_narrows_with_more_seeds():
    rng = np.random.default_rng(3)
    few, many = rng.normal(0.8, 0.02, 4), rng.normal(0.8, 0.02, 64)
    w_few = np.subtract(*mean_ci(few)[::-1])
    w_many = np.subtract(*mean_ci(many)[::-1])
    assert w_many < w_few


def test_paired_test_small_p_on_clearly_different_large_on_identical():
    rng = np.random.default_rng(0)
    a = rng.normal(0.80, 0.01, 10)
    b = a - 0.05 + rng.normal(0, 0.003, 10)
    diff = paired_test(a, b)
    assert diff.p_value < 0.01 and diff.ci_low > 0.04 and diff.mean_diff == pytest.approx(np.mean(a - b))
    same = paired_test(a, a)
    assert same.p_value == 1.0 and same.mean_diff == 0.0
    noise = paired_test(a, a + rng.normal(0, 0.01, 10))
    assert noise.p_value > 0.1 and noise.ci_low < 0 < noise.ci_high
    # 10 pairs all favouring A: the exact sign-flip p-value is 2 / 2**10
    assert diff.p_value == pytest.approx(2 / 2**10)


def test_paired_test_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1.0, 2.0], [1.0])


def test_matched_pairs_join_on_cell_and_keep_no_prefix_apart():
    df = pd.DataFrame([
        {"method": "a", "task": "t", "backbone": "b", "prefix_length": 5.0, "seed": 0, "main_score": 0.9},
        {"method": "b", "task": "t", "backbone": "b", "prefix_length": 5, "seed": 0, "main_score": 0.8},
        {"method": "a", "task": "t", "backbone": "b", "prefix_length": 5, "seed": 1, "main_score": 0.7},
        {"method": "b", "task": "t", "backbone": "b", "prefix_length": None, "seed": 1, "main_score": 0.6},
    ])
    pairs = matched_pairs(df, "a", "b")
    assert len(pairs) == 1 and pairs.iloc[0]["a"] == 0.9 and pairs.iloc[0]["b"] == 0.8
    assert compare_methods(df, "a", "b").n == 1


def test_one_pair_is_a_difference_not_a_test():
    one = paired_test([0.9], [0.8])
    assert math.isnan(one.p_value) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    assert one.n == 1 and one.mean_diff == pytest.approx(0.1) and not one.tested
    two = paired_test([0.9, 0.7], [0.8, 0.6])
    assert two.tested and two.p_value == pytest.approx(0.5) and two.ci_low == pytest.approx(0.1)
