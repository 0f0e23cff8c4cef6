"""Paired bootstrap and sign-flip test: hand cases, and the fast forms against slow obviously-correct ones
(every one of the n^n index tuples; every one of the 2^n sign vectors, written as loops)."""

from __future__ import annotations

import bisect
import itertools

import numpy as np
import pytest

from opdkit.core.paired import (
    bootstrap_distribution,
    compare_paired,
    percentile_interval,
    sign_flip_p_value,
)


def reference_interval(diffs, confidence):
    """Enumerate all n^n resamples (equally likely), then the same percentile rule by counting."""
    n = len(diffs)
    means = sorted(sum(diffs[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n))
    tail = (1 - confidence) / 2 * len(means)
    at_most = lambda v: bisect.bisect_right(means, v + 1e-12)  # noqa: E731  (#{m <= v})
    at_least = lambda v: len(means) - bisect.bisect_left(means, v - 1e-12)  # noqa: E731  (#{m >= v})
    low = next(v for v in means if at_most(v) >= tail - 1e-9)
    high = next(v for v in reversed(means) if at_least(v) >= tail - 1e-9)
    return low, high


def reference_p(diffs):
    n, observed, hits = len(diffs), abs(sum(diffs) / len(diffs)), 0
    for signs in itertools.product((1, -1), repeat=n):
        hits += abs(sum(s * d for s, d in zip(signs, diffs)) / n) >= observed - 1e-12
    return hits / 2**n


def test_two_differences_hand_case():
    dist = bootstrap_distribution(np.array([0.0, 1.0]))
    # resample means of (0, 1): 0 (both draws 0, 1/4), 0.5 (1/2), 1 (1/4)
    np.testing.assert_allclose(dist.values, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(dist.probs, [0.25, 0.5, 0.25])
    assert dist.exact
    assert percentile_interval(dist, 0.95) == (0.0, 1.0)
    # 50 %: low = smallest v with P(X <= v) >= 0.25 -> 0; high = largest v with P(X >= v) >= 0.25 -> 1
    assert percentile_interval(dist, 0.5) == (0.0, 1.0)
    # 10 %: tails of 0.45 -> P(X <= 0) = 0.25 < 0.45, P(X <= 0.5) = 0.75 -> low 0.5; high 0.5 likewise
    assert percentile_interval(dist, 0.1) == (0.5, 0.5)


def test_sign_flip_hand_cases():
    # all five positive: only the all-plus and all-minus flips reach |mean| >= 3 -> 2/32
    assert sign_flip_p_value(np.array([1.0, 2, 3, 4, 5])) == pytest.approx(2 / 32)
    assert sign_flip_p_value(np.array([-1.0, 1.0])) == 1.0  # mean 0: every flip is as extreme
    assert sign_flip_p_value(np.array([1.0, 1.0, 1.0])) == pytest.approx(0.25)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_exact_bootstrap_interval_matches_enumerating_every_resample(n):
    rng = np.random.default_rng(n)
    for _ in range(3):
        diffs = rng.normal(size=n).round(3).tolist()
        for confidence in (0.95, 0.8, 0.5):
            got = percentile_interval(bootstrap_distribution(np.array(diffs)), confidence)
            assert got == pytest.approx(reference_interval(diffs, confidence), abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_sign_flip_matches_enumerating_every_sign_vector(n):
    rng = np.random.default_rng(10 + n)
    diffs = rng.normal(0.1, 1.0, size=n).round(3).tolist()
    assert sign_flip_p_value(np.array(diffs)) == pytest.approx(reference_p(diffs))


def test_monte_carlo_bootstrap_agrees_with_the_exact_one():
    diffs = np.random.default_rng(3).normal(size=6)
    exact = percentile_interval(bootstrap_distribution(diffs), 0.9)
    sampled_dist = bootstrap_distribution(diffs, max_exact=0, resamples=50_000)
    assert not sampled_dist.exact
    sampled = percentile_interval(sampled_dist, 0.9)
    assert sampled == pytest.approx(exact, abs=0.03 * np.ptp(diffs))


def test_three_seeds_never_claim_a_difference():
    result = compare_paired([0.05, 0.07, 0.06])
    # every resample mean lies in [0.05, 0.07]: the interval excludes 0, but 3 pairs allow p >= 0.25
    assert result.low > 0 and result.min_p_value == 0.25 and result.p_value == 0.25
    assert result.verdict == "no difference detectable at this budget"
    assert "3 pairs cannot reach" in result.reason


def test_six_consistent_seeds_show_a_difference_and_mixed_ones_do_not():
    better = compare_paired([0.3, 0.1, 0.1, 0.1, 0.1, 0.1])
    # observed mean 0.133; only the all-plus / all-minus flips reach it -> p = 2/64
    assert better.p_value == pytest.approx(2 / 64) and better.verdict == "B > A" and better.exact
    worse = compare_paired([-0.3, -0.1, -0.1, -0.1, -0.1, -0.1])
    assert worse.verdict == "B < A" and worse.high < 0
    mixed = compare_paired([0.1, -0.1, 0.05, -0.05, 0.02, 0.0])
    assert mixed.verdict == "no difference detectable at this budget" and mixed.low < 0 < mixed.high
    with pytest.raises(ValueError, match="at least 2"):
        compare_paired([0.1])
