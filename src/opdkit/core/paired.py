"""Paired comparison of two methods over seeds: bootstrap interval, sign-flip test, and an honest verdict.

Two methods run with the same seeds and budget give one difference per seed, d_i = metric(B, seed i) −
metric(A, seed i). Pairing removes what the seed shares (data order, sampling stream).

- ``bootstrap_distribution``: the distribution of the mean of n draws with replacement from d. For small n it
  is exact: every multiset of draws (counts c_1..c_n, Σ c = n) has probability n!/(Π c_i!) / n^n and mean
  Σ c_i d_i / n, C(2n−1, n) multisets in all (462 for n = 6). Otherwise ``resamples`` Monte Carlo draws.
- ``percentile_interval``: the percentile interval at ``confidence`` = 1 − a: low = the smallest value v with
  P(X ≤ v) ≥ a/2, high = the largest v with P(X ≥ v) ≥ a/2 (symmetric, conservative on ties).
- ``sign_flip_p_value``: the exact two-sided paired permutation test: under "no difference" each d_i is as
  likely to have the other sign, so p = #{s ∈ {±1}^n : |mean(s·d)| ≥ |mean(d)|} / 2^n. With n pairs the
  smallest p is 2/2^n (0.25 for 3 seeds), which is why 3 seeds can never show a difference at the 5 % level.
- ``compare_paired``: both, and the verdict. A difference is claimed only when the bootstrap interval excludes
  0 *and* the sign-flip test rejects at 1 − confidence: with few seeds the percentile bootstrap interval is
  too narrow (for n ≤ 3 it is at most [min d, max d], so three same-sign differences would "exclude 0").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

MAX_EXACT = 100_000  # enumerate the bootstrap exactly up to this many multisets (n <= 10)


@dataclass(frozen=True)
class Distribution:
    """A discrete distribution: sorted ``values`` and their ``probs`` (summing to 1); ``exact`` when
    enumerated, False when sampled."""

    values: np.ndarray
    probs: np.ndarray
    exact: bool


def _compositions(n: int, parts: int):
    """Every tuple of ``parts`` non-negative ints summing to n (stars and bars)."""
    for bars in itertools.combinations(range(n + parts - 1), parts - 1):
        edges = (-1, *bars, n + parts - 1)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))


def bootstrap_distribution(
    diffs: np.ndarray, *, resamples: int = 20_000, seed: int = 0, max_exact: int = MAX_EXACT
) -> Distribution:
    """The bootstrap distribution of the mean of ``diffs`` (module docstring)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("no differences to resample")
    if math.comb(2 * n - 1, n) <= max_exact:
        counts = np.array(list(_compositions(n, n)), dtype=np.float64)
        log_p = math.lgamma(n + 1) - np.sum([[math.lgamma(c + 1) for c in row] for row in counts], axis=1)
        probs = np.exp(log_p - n * math.log(n))
        values = counts @ d / n
        exact = True
    else:
        rng = np.random.default_rng(seed)
        values = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        probs = np.full(resamples, 1.0 / resamples)
        exact = False
    order = np.argsort(values, kind="stable")
    return Distribution(values[order], probs[order] / probs.sum(), exact)


def percentile_interval(dist: Distribution, confidence: float) -> tuple[float, float]:
    """(low, high) of the module docstring; 1e-12 absorbs the rounding of the cumulative sums."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    below = np.cumsum(dist.probs)  # P(X <= values[i])
    above = np.cumsum(dist.probs[::-1])[::-1]  # P(X >= values[i])
    low = dist.values[np.argmax(below >= tail - 1e-12)]
    high = dist.values[len(above) - 1 - np.argmax(above[::-1] >= tail - 1e-12)]
    return float(low), float(high)


def sign_flip_p_value(
    diffs: np.ndarray, *, max_exact_pairs: int = 20, flips: int = 200_000, seed: int = 0
) -> float:
    """Two-sided paired sign-flip p-value (exact up to ``max_exact_pairs`` pairs, else ``flips`` random)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("no differences to test")
    if n <= max_exact_pairs:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    else:
        bits = np.random.default_rng(seed).integers(0, 2, size=(flips, n))
    stats = np.abs(((1 - 2 * bits) * d).mean(axis=1))
    observed = abs(d.mean())
    return float(np.mean(stats >= observed - 1e-12 * max(1.0, observed)))


@dataclass(frozen=True)
class PairedComparison:
    """Difference B − A over ``n`` paired seeds: its mean, the bootstrap interval at ``confidence`` (``exact``
    when enumerated), the sign-flip p-value, the smallest p-value n pairs allow, and the verdict:
    "B > A", "B < A" or "no difference detectable at this budget"; ``reason`` says why."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float
    exact: bool
    p_value: float
    min_p_value: float
    verdict: str
    reason: str


def compare_paired(
    diffs, *, confidence: float = 0.95, resamples: int = 20_000, seed: int = 0
) -> PairedComparison:
    """Bootstrap interval, sign-flip test and verdict for paired differences B − A (module docstring)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        raise ValueError(f"need at least 2 paired seeds, got {d.size}")
    dist = bootstrap_distribution(d, resamples=resamples, seed=seed)
    low, high = percentile_interval(dist, confidence)
    p, min_p, alpha = sign_flip_p_value(d), min(1.0, 2.0 / 2**d.size), 1 - confidence
    excludes_zero = low > 0 or high < 0
    if excludes_zero and p <= alpha + 1e-12:
        verdict = "B > A" if low > 0 else "B < A"
        reason = f"the interval excludes 0 and the sign-flip test rejects: p = {p:.3g} <= {alpha:.3g}"
    else:
        verdict = "no difference detectable at this budget"
        if min_p > alpha:
            reason = f"{d.size} pairs cannot reach p <= {alpha:.3g}: the smallest sign-flip p is {min_p:.3g}"
        elif excludes_zero:
            reason = f"the interval excludes 0 but the sign-flip test does not reject: p = {p:.3g}"
        else:
            reason = f"the interval contains 0; sign-flip p = {p:.3g}"
    return PairedComparison(
        d.size, float(d.mean()), low, high, confidence, dist.exact, p, min_p, verdict, reason
    )
