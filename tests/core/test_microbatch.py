"""Per-micro-batch token means (``core.microbatch``): the per-row factors against a direct loop over the
micro-batches, the packing, and hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from opdkit.core.losses import aggregate
from opdkit.core.microbatch import (
    balanced_micro_batches,
    micro_batch_mass,
    micro_batch_scales,
    micro_batch_token_mean,
)


def test_scales_of_the_docstring_example():
    # rows of 1, 3, 4 valid tokens; micro-batches {0, 1} (D_b = 4) and {2} (D_b = 4); D = 8, N = 3:
    # c = (2/3·8/4, 2/3·8/4, 1/3·8/4) = (4/3, 4/3, 2/3)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    scales = micro_batch_scales([[0, 1], [2]], mask)
    torch.testing.assert_close(scales, torch.tensor([4 / 3, 4 / 3, 2 / 3]))
    # ℓ = 1 everywhere: each micro-batch mean is 1, so L_micro = 2/3 + 1/3 = 1 = the global mean
    loss = torch.ones(3, 4)
    assert float(micro_batch_token_mean(loss, mask, [[0, 1], [2]])) == pytest.approx(1.0)
    # ℓ = 1 on row 0 only: micro-batch {0, 1} has mean 1/4, scaled by 2/3 -> 1/6; global mean 1/8
    loss = torch.zeros(3, 4)
    loss[0] = 1.0
    assert float(micro_batch_token_mean(loss, mask, [[0, 1], [2]])) == pytest.approx(1 / 6)
    assert float(aggregate(loss * scales[:, None], mask, "token-mean")) == pytest.approx(1 / 6)


@pytest.mark.parametrize("seed", range(5))
def test_scaled_global_mean_equals_the_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n, t = 11, 9
    lengths_N = torch.randint(0, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths_N[:, None]
    mask[:, :] &= torch.rand(n, 1, generator=g) > 0.3  # some rows with no token on this path
    loss = torch.randn(n, t, generator=g)
    loss[~mask] = float("nan")  # masked positions never reach either result
    parts = balanced_micro_batches((lengths_N + 5).tolist(), token_budget=20)
    expected = micro_batch_token_mean(loss, mask, parts)
    got = aggregate(loss * micro_batch_scales(parts, mask)[:, None], mask, "token-mean")
    torch.testing.assert_close(got, expected)


def test_balanced_packing():
    # Σ = 24 tokens, budget 10 -> K = 3; longest first to the lightest: 9 -> b0, 8 -> b1, 3 -> b2 (3),
    # 2 -> b2 (5), 2 -> b2 (7)
    assert balanced_micro_batches([9, 8, 3, 2, 2], 10) == [[0], [1], [2, 3, 4]]
    assert balanced_micro_batches([3, 3], 100) == [[0, 1]]  # one micro-batch holds everything
    assert balanced_micro_batches([], 10) == []
    with pytest.raises(ValueError, match="does not fit"):
        balanced_micro_batches([11, 1], 10)
    with pytest.raises(ValueError, match="positive"):
        balanced_micro_batches([1], 0)
    with pytest.raises(ValueError, match="hold 1 rows, the mask 2"):
        micro_batch_scales([[0]], torch.ones(2, 3))


def test_mass_of_a_path():
    # 4 one-token rows in micro-batches {0, 2} and {1, 3}; only row 0 is on the path:
    # the per-micro-batch means weigh it 2/4 = 0.5 where the global mean weighs the path 1.
    path = torch.tensor([[1], [0], [0], [0]])
    parts = balanced_micro_batches([1, 1, 1, 1], 2)
    assert parts == [[0, 2], [1, 3]]  # ties: rows in order, each to the lightest micro-batch
    assert micro_batch_mass(parts, path) == pytest.approx(0.5)
    assert micro_batch_mass(parts, torch.ones(4, 1)) == pytest.approx(1.0)


def test_one_sequence_micro_batches_are_the_per_sequence_mean():
    """lasgroup's GRPO baseline: verl's legacy actor with one sequence per micro-batch takes each sequence's
    token mean and scales it by 1/N, i.e. ``seq-mean-token-mean`` over all N sequences (the paper/grpo
    presets' ``method.agg``). Rows of 1 and 3 tokens with ℓ = (2 | 1, 1, 7): (2 + 9/3)/2 = 2.5, where the
    global token mean is (2 + 9)/4 = 2.75."""
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    loss = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 7.0]])
    per_sequence = micro_batch_token_mean(loss, mask, [[0], [1]])
    assert float(per_sequence) == pytest.approx(2.5)
    assert float(aggregate(loss, mask, "seq-mean-token-mean")) == pytest.approx(2.5)
    assert float(aggregate(loss, mask, "token-mean")) == pytest.approx(2.75)
    # a row with no token still counts in N (verl's masked mean gives it 0): per_sequence_all
    mask3, loss3 = torch.cat([mask, torch.zeros(1, 3, dtype=mask.dtype)]), torch.cat([loss, torch.ones(1, 3)])
    expected = aggregate(loss3, mask3, "seq-mean-token-mean", denominator="per_sequence_all")
    torch.testing.assert_close(micro_batch_token_mean(loss3, mask3, [[0], [1], [2]]), expected)
    assert float(expected) == pytest.approx(5 / 3)
