"""Evaluation metrics (docs/algorithms.md §8.1) against math.comb, loop references and exact expectations."""

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from opdkit.metrics import (
    bootstrap_best_at_k,
    bootstrap_maj_at_k,
    maj_at_k,
    mean_at_k,
    pass_at_k,
    pass_at_k_mean,
)


def _pass_at_k_comb(n: int, c: int, k: int) -> float:
    """Chen et al. 2021 verbatim: 1 − C(n−c, k)/C(n, k) (math.comb is 0 when k > n − c), exact rationals."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def _vote(preds: list, scores: list) -> float:
    """§8.1 exact maj@k for one question: the most frequent prediction, ties to the one seen first; its score
    (taken from its first sample; the tests give every sample with the same prediction the same score)."""
    order, counts = [], {}
    for p in preds:
        if p not in counts:
            order.append(p)
            counts[p] = 0
        counts[p] += 1
    best = order[0]
    for p in order[1:]:
        if counts[p] > counts[best]:  # strictly more: an equal count keeps the earlier prediction
            best = p
    return scores[preds.index(best)]


def test_pass_at_k_equals_the_combinatorial_formula():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_comb(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(2000, 1000) ≈ 2e600 is not representable in float64, so a ratio of float binomials fails there; the
    # stable product form (§8.1) must still match the exact rationals.
    for n, c, k in [(1000, 3, 100), (2000, 10, 1000), (2000, 1, 1), (2000, 1999, 2)]:
        assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_comb(n, c, k), rel=1e-10, abs=1e-12)


def test_pass_at_k_with_k_equal_n_is_the_indicator_of_any_success():
    # §8.1: with k = n every sample is drawn, so pass@n = 1[c > 0] (C(n−c, n)/C(n, n) = 1[c = 0]).
    for n in (1, 2, 8, 32):
        for c in range(n + 1):
            assert pass_at_k(n, c, n) == (1.0 if c > 0 else 0.0)


def test_pass_at_k_hand_cases_and_errors():
    # n = 4, c = 1, k = 2: 1 − C(3,2)/C(4,2) = 1 − 3/6 = 0.5
    # n = 5, c = 2, k = 2: 1 − C(3,2)/C(5,2) = 1 − 3/10 = 0.7
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 = c/n
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


@pytest.mark.parametrize("seed", range(8))
def test_mean_and_pass_at_k_mean_match_loops(seed):
    rng = random.Random(seed)
    p, k = rng.randint(1, 6), rng.randint(1, 10)
    scores = [[float(rng.random() < 0.4) for _ in range(k)] for _ in range(p)]
    expected_mean = sum(sum(row) / k for row in scores) / p
    assert mean_at_k(scores) == pytest.approx(expected_mean)
    assert mean_at_k(np.array(scores)) == pytest.approx(expected_mean)
    kk = rng.randint(1, k)
    expected_pass = sum(_pass_at_k_comb(k, int(sum(row)), kk) for row in scores) / p
    assert pass_at_k_mean(scores, kk) == pytest.approx(expected_pass)
    assert pass_at_k_mean(scores) == pytest.approx(sum(float(any(row)) for row in scores) / p)


@pytest.mark.parametrize("seed", range(10))
def test_maj_at_k_matches_loop_reference(seed):
    rng = random.Random(seed)
    p, k = rng.randint(1, 6), rng.randint(1, 9)
    alphabet = ["1", "2", "x", None][: rng.randint(1, 4)]  # None: no answer extracted, its own vote
    truth = {a: float(rng.random() < 0.5) for a in alphabet}  # a verifier: equal predictions, equal scores
    preds = [[rng.choice(alphabet) for _ in range(k)] for _ in range(p)]
    scores = [[truth[x] for x in row] for row in preds]
    expected = sum(_vote(row, s) for row, s in zip(preds, scores)) / p
    assert maj_at_k(preds, scores) == pytest.approx(expected)
    assert maj_at_k(np.array(preds, dtype=object), np.array(scores)) == pytest.approx(expected)


def test_maj_at_k_ties_go_to_the_first_occurrence():
    # Question 1: "a" ×2 and "b" ×2 tie; "a" was seen first -> its score 1.
    # Question 2: "b" ×2, "a" ×2, "b" first -> its score 0.
    # Question 3: clear majority "c" ×3 (score 1) against "a" ×1.
    preds = [["a", "b", "b", "a", "z"], ["b", "a", "a", "b", "z"], ["c", "a", "c", "c", "z"]]
    scores = [[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0]]
    assert maj_at_k(preds[:1], scores[:1]) == 1.0
    assert maj_at_k(preds[1:2], scores[1:2]) == 0.0
    assert maj_at_k(preds, scores) == pytest.approx(2 / 3)


def test_maj_at_k_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        maj_at_k([["a", "b"]], [[1, 0, 1]])


# ---------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize(("n", "c", "k"), [(32, 1, 32), (16, 4, 16), (8, 3, 4), (10, 0, 5), (10, 10, 3)])
def test_bootstrap_best_at_k_expectation(n, c, k):
    # §8.1: k draws with replacement; the max is 0 only if every draw is a failure, probability (1 − c/n)^k,
    # so E[best@k] = 1 − (1 − c/n)^k. With 1000 resamples (the verl default) the estimate's std is
    # sqrt(E(1−E)/1000) ≤ 0.016; allow 5 std. With 200 000 resamples the std is ≤ 0.0011.
    scores = [[1.0] * c + [0.0] * (n - c)]
    expectation = 1 - (1 - c / n) ** k
    default = bootstrap_best_at_k(scores, k)
    assert abs(default - expectation) <= 5 * math.sqrt(expectation * (1 - expectation) / 1000) + 1e-12
    many = bootstrap_best_at_k(scores, k, resamples=200_000, seed=1)
    assert abs(many - expectation) <= 5 * math.sqrt(expectation * (1 - expectation) / 200_000) + 1e-12
    assert default == bootstrap_best_at_k(scores, k)  # seeded (42): reproducible


def test_bootstrap_best_at_k_is_below_unbiased_pass_at_k():
    # §8.1 example: c = 1, n = k = 32: 1 − (31/32)^32 = 1 − e^{32·ln(0.96875)} = 1 − e^{−1.01596} = 0.63799,
    # whereas unbiased pass@32 = 1[c > 0] = 1.0.
    expectation = 1 - (31 / 32) ** 32
    assert expectation == pytest.approx(0.638, abs=5e-4)
    scores = [[1.0] + [0.0] * 31]
    assert bootstrap_best_at_k(scores, 32, resamples=200_000) == pytest.approx(0.638, abs=0.005)
    assert pass_at_k_mean(scores, 32) == 1.0
    # macro mean over questions: the second question (all correct) has best@k = 1
    two = [[1.0] + [0.0] * 31, [1.0] * 32]
    assert bootstrap_best_at_k(two, 32, resamples=200_000) == pytest.approx((expectation + 1) / 2, abs=0.005)


def _exact_bootstrap_maj(preds: list, scores: list, k: int) -> float:
    """E over all n^k equally likely index tuples (draws with replacement) of the exact vote."""
    n = len(preds)
    total = 0.0
    for idx in itertools.product(range(n), repeat=k):
        total += _vote([preds[i] for i in idx], [scores[i] for i in idx])
    return total / n**k


@pytest.mark.parametrize(
    ("preds", "scores", "k"),
    [
        (["1", "2", "2"], [1.0, 0.0, 0.0], 3),
        (["1", "2", "3", "1"], [1.0, 0.0, 0.0, 1.0], 2),
        (["7", "7", "x", None, "x"], [1.0, 1.0, 0.0, 0.0, 0.0], 4),
    ],
)
def test_bootstrap_maj_at_k_expectation(preds, scores, k):
    # The bootstrap maj@k estimates the expectation of the exact vote over k draws with replacement, which
    # for small n we can enumerate. With 20 000 resamples the std is ≤ 0.5/sqrt(20 000) = 0.0035; allow 5 std.
    exact = _exact_bootstrap_maj(preds, scores, k)
    got = bootstrap_maj_at_k([preds], [scores], k, resamples=20_000, seed=3)
    assert got == pytest.approx(exact, abs=5 * 0.5 / math.sqrt(20_000))
    default = bootstrap_maj_at_k([preds], [scores], k)
    assert abs(default - exact) <= 5 * 0.5 / math.sqrt(1000)
    assert default == bootstrap_maj_at_k([preds], [scores], k)  # seeded: reproducible


def test_bootstrap_maj_of_a_unanimous_question_is_its_score():
    assert bootstrap_maj_at_k([["4"] * 5, ["5"] * 5], [[1] * 5, [0] * 5], 3) == pytest.approx(0.5)


def test_bootstrap_defaults_are_verls():
    # §8.1: 1000 resamples, seed 42.
    import inspect

    for fn in (bootstrap_best_at_k, bootstrap_maj_at_k):
        params = inspect.signature(fn).parameters
        assert (params["resamples"].default, params["seed"].default) == (1000, 42)
