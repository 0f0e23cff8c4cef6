"""Random inputs for the core tests: arbitrary, non-contiguous group ids, ragged masks, float tensors.

Everything is seeded so a failing case reproduces from its seed.
"""

from __future__ import annotations

import random

import torch

SEEDS = range(12)


def group_ids(rng: random.Random, n: int) -> list[int]:
    """n rows in 1..n groups with arbitrary int64 ids (negative and huge included), rows shuffled so that
    groups are not contiguous; small groups and singletons are common."""
    num_groups = rng.randint(1, n)
    labels = rng.sample(range(-(2**40), 2**40), num_groups)
    rows = list(range(num_groups)) + [rng.randrange(num_groups) for _ in range(n - num_groups)]
    rng.shuffle(rows)
    return [labels[r] for r in rows]


def binary(rng: random.Random, n: int, p: float | None = None) -> list[float]:
    p = rng.random() if p is None else p
    return [float(rng.random() < p) for _ in range(n)]


def ragged_mask(rng: random.Random, n: int, t: int, *, holes: bool = False) -> list[list[int]]:
    """Right-padded masks of random lengths 0..t (an empty row now and then); ``holes``: any 0/1 pattern."""
    if holes:
        return [[int(rng.random() < 0.6) for _ in range(t)] for _ in range(n)]
    lengths = [0 if rng.random() < 0.15 else rng.randint(1, t) for _ in range(n)]
    return [[int(j < length) for j in range(t)] for length in lengths]


def normal(rng: random.Random, *shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """A float64 tensor of N(shift, scale²) entries drawn from ``rng`` (reproducible from the seed)."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift


def log_probs(rng: random.Random, *shape: int) -> torch.Tensor:
    """Plausible token log-probs in (−6, 0): −|N(0, 2)|."""
    return -normal(rng, *shape, scale=2.0).abs().clamp(max=6.0)


def shapes(rng: random.Random) -> tuple[int, int]:
    """(N, T) with N in 1..12 and T in 1..7."""
    return rng.randint(1, 12), rng.randint(1, 7)


def close(actual: torch.Tensor, expected, tol: float = 1e-5) -> None:
    """assert_close in float64 with equal absolute and relative tolerance."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=tol, rtol=tol)
