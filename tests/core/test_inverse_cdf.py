"""``core.sampling.inverse_cdf_sample``: against a loop over cumulative sums, hand cases, frequencies."""

from __future__ import annotations

import bisect

import pytest
import torch

from opdkit.core.sampling import inverse_cdf_sample


def reference(probs_N_V: torch.Tensor, uniform_N: torch.Tensor) -> list[int]:
    """Row by row in Python floats: the first index whose running sum exceeds u · total."""
    out = []
    for row, u in zip(probs_N_V.tolist(), uniform_N.tolist()):
        cdf, total = [], 0.0
        for p in row:
            total += p
            cdf.append(total)
        i = bisect.bisect_right(cdf, u * total)
        out.append(min(i, max(j for j, p in enumerate(row) if p > 0)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_reference_on_random_rows_with_zeros(seed):
    g = torch.Generator().manual_seed(seed)
    probs_N_V = torch.rand(64, 37, generator=g, dtype=torch.float64)
    probs_N_V[torch.rand(64, 37, generator=g) < 0.4] = 0.0  # filtered tokens (top-k / top-p)
    probs_N_V[:, 0] += 1e-3  # every row keeps some mass
    uniform_N = torch.rand(64, generator=g, dtype=torch.float64)
    assert inverse_cdf_sample(probs_N_V, uniform_N).tolist() == reference(probs_N_V, uniform_N)


def test_hand_computed_draws():
    # cdf of [0.25, 0, 0.5, 0.25] = [0.25, 0.25, 0.75, 1.0] (all exact in binary); the pick is the first
    # index whose cdf exceeds u: u = 0.125 -> 0; u = 0.25 -> 2 (cdf 0.25 does not exceed 0.25, and index 1 has
    # no mass); u = 0.5 -> 2; u = 0.75 -> 3; u = 0.875 -> 3.
    probs = torch.tensor([[0.25, 0.0, 0.5, 0.25]]).expand(5, 4)
    got = inverse_cdf_sample(probs, torch.tensor([0.125, 0.25, 0.5, 0.75, 0.875]))
    assert got.tolist() == [0, 2, 2, 3, 3]
    # unnormalised [2, 0, 5, 3]: cdf [2, 2, 7, 10], u = 0.5 -> threshold 5 -> index 2
    assert inverse_cdf_sample(torch.tensor([[2.0, 0.0, 5.0, 3.0]]), torch.tensor([0.5])).tolist() == [2]


def test_a_threshold_at_the_total_takes_the_last_token_with_mass():
    # u = 1 (the limit of [0, 1), what rounding can reach): no cdf exceeds the total, and the trailing
    # zero-probability tokens must not be chosen.
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0]])
    assert inverse_cdf_sample(probs, torch.ones(2)).tolist() == [1, 2]


def test_frequencies_match_the_probabilities():
    probs_V = torch.tensor([0.05, 0.0, 0.45, 0.3, 0.2])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    draws = inverse_cdf_sample(probs_V.expand(n, 5), torch.rand(n, generator=g))
    counts = torch.bincount(draws, minlength=5).double()
    sigma = (n * probs_V * (1 - probs_V)).sqrt()
    assert counts[1] == 0
    assert ((counts - n * probs_V).abs() <= 4 * sigma + 1e-9).all(), counts / n


def test_rows_are_independent_of_their_order():
    g = torch.Generator().manual_seed(3)
    probs_N_V, uniform_N = torch.rand(16, 9, generator=g), torch.rand(16, generator=g)
    perm = torch.randperm(16, generator=g)
    permuted = inverse_cdf_sample(probs_N_V[perm], uniform_N[perm])
    assert torch.equal(inverse_cdf_sample(probs_N_V, uniform_N)[perm], permuted)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected probs"):
        inverse_cdf_sample(torch.rand(3, 4), torch.rand(4))
