"""Evaluation metrics of the papers: mean@k, unbiased pass@k, exact maj@k and their bootstrap variants.

docs/algorithms.md §8.1. Per question, from k samples with binary scores s_j and extracted predictions pred_j:

- ``mean_at_k``   (Avg@k): (1/k) Σ_j s_j, averaged over questions.
- ``pass_at_k``   unbiased (Chen et al. 2021): 1 − C(n−c, k)/C(n, k) for one question with c correct of n.
- ``maj_at_k``    exact: the most frequent prediction (ties: first occurrence) and its score.
- ``bootstrap_best_at_k`` / ``bootstrap_maj_at_k``: verl's ``best@k/mean`` and ``maj@k/mean`` (SCOPE's
  "Pass@k"): k indices drawn *with replacement* from the n samples, 1000 resamples, seed 42. These are
  labelled separately because they are smaller than the unbiased estimates (c=1, n=k=32: 0.638 vs 1.0).

Inputs are nested lists or arrays shaped (P questions, K samples); predictions are strings (None counts as
its own "no answer" vote). Reductions are macro means over questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question with ``c`` correct out of ``n`` samples.

    Stable form of 1 − C(n−c, k)/C(n, k): 1 − Π_{i=n−c+1..n} (1 − k/i); equals 1 when n − c < k.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def _as_scores(correct_P_K: Any) -> np.ndarray:
    arr = np.asarray(correct_P_K, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"expected a (questions, samples) array with samples >= 1, got shape {arr.shape}")
    return arr


def mean_at_k(correct_P_K: Any) -> float:
    """Avg@k / mean@k: the mean score over all k samples of each question, averaged over questions."""
    return float(_as_scores(correct_P_K).mean(axis=1).mean())


def pass_at_k_mean(correct_P_K: Any, k: int | None = None) -> float:
    """Unbiased pass@k averaged over questions; k defaults to the number of samples per question."""
    scores = _as_scores(correct_P_K)
    n = scores.shape[1]
    k = n if k is None else k
    return float(np.mean([pass_at_k(n, int(c), k) for c in (scores > 0.5).sum(axis=1)]))


def _vote(preds: Sequence[Any], scores: np.ndarray) -> float:
    """Score of the most frequent prediction; ties go to the value that occurred first."""
    counts: dict[Any, int] = {}
    first_score: dict[Any, float] = {}
    for pred, score in zip(preds, scores):
        counts[pred] = counts.get(pred, 0) + 1
        first_score.setdefault(pred, float(score))
    best = max(counts, key=lambda p: counts[p])  # max keeps the first key among equal counts
    return first_score[best]


def maj_at_k(preds_P_K: Sequence[Sequence[Any]], correct_P_K: Any) -> float:
    """Exact maj@k: vote over the k predictions of each question (ties: first occurrence)."""
    scores = _as_scores(correct_P_K)
    _check_same_shape(preds_P_K, scores)
    return float(np.mean([_vote(list(p), s) for p, s in zip(preds_P_K, scores)]))


def _check_same_shape(preds_P_K: Sequence[Sequence[Any]], scores: np.ndarray) -> None:
    if len(preds_P_K) != scores.shape[0] or any(len(p) != scores.shape[1] for p in preds_P_K):
        raise ValueError(f"predictions and scores differ in shape; scores are {scores.shape}")


def bootstrap_best_at_k(correct_P_K: Any, k: int, *, resamples: int = 1000, seed: int = 42) -> float:
    """verl ``best@k/mean``: mean over resamples of max(s) over k draws with replacement.

    Its expectation per question is 1 − (1 − c/n)^k.
    """
    scores = _as_scores(correct_P_K)
    rng = np.random.default_rng(seed)
    per_q = []
    for s in scores:
        idx_R_k = rng.integers(0, len(s), size=(resamples, k))
        per_q.append(s[idx_R_k].max(axis=1).mean())
    return float(np.mean(per_q))


def bootstrap_maj_at_k(
    preds_P_K: Sequence[Sequence[Any]], correct_P_K: Any, k: int, *, resamples: int = 1000, seed: int = 42
) -> float:
    """verl ``maj@k/mean``: the exact vote on k draws with replacement, averaged over resamples."""
    scores = _as_scores(correct_P_K)
    _check_same_shape(preds_P_K, scores)
    rng = np.random.default_rng(seed)
    per_q = []
    for preds, s in zip(preds_P_K, scores):
        preds = list(preds)
        idx_R_k = rng.integers(0, len(s), size=(resamples, k))
        per_q.append(np.mean([_vote([preds[i] for i in row], s[row]) for row in idx_R_k]))
    return float(np.mean(per_q))
