"""Per-micro-batch token means, as verl's legacy actor takes them with dynamic batch sizes.

With ``use_dynamic_bsz`` verl packs a mini-batch of N sequences into K = ceil(Σ_i len_i / budget)
micro-batches balanced by token count (len_i = prompt + response tokens), takes every loss term's token mean
*inside* each micro-batch and scales micro-batch b by n_b / N before the gradients add up:

    L_micro = Σ_b (n_b / N) · Σ_{i∈b} Σ_t M[i,t]·ℓ[i,t] / D_b,     D_b = Σ_{i∈b} Σ_t M[i,t]
    (a micro-batch with D_b = 0 adds 0: verl's masked mean divides by D_b + ε)

opdkit's global token mean is L = Σ_i Σ_t M·ℓ / D with D = Σ_b D_b. L_micro is L with row i's loss times

    c_i = (n_b(i) / N) · D / D_b(i)          (c_i = 0 when D_b(i) = 0)

so per-micro-batch averaging is a per-row factor on an unchanged global-mean loss (``micro_batch_scales``).
Example: rows of 1, 3 and 4 valid tokens, micro-batches {0, 1} and {2}: D = 8, c = (2/3·8/4, 2/3·8/4,
1/3·8/4) = (4/3, 4/3, 2/3).

``balanced_micro_batches`` packs like verl: K as above, the rows assigned longest first to the micro-batch
with the fewest tokens so far (the longest-processing-time rule; verl balances with Karmarkar-Karp, so its
sets can differ while K and the balance are the same).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch


def balanced_micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Row indices of K = ceil(Σ lengths / token_budget) micro-batches (1 <= K <= N), balanced by tokens.

    Each micro-batch lists its rows in increasing order; micro-batches are ordered by their smallest row.
    """
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    n = len(lengths)
    if n == 0:
        return []
    if max(lengths) > token_budget:  # verl asserts the same: one sequence must fit a micro-batch
        longest = max(lengths)
        raise ValueError(f"a sequence of {longest} tokens does not fit a {token_budget}-token micro-batch")
    k = min(n, max(1, math.ceil(sum(lengths) / token_budget)))
    heap = [(0, b) for b in range(k)]  # (tokens so far, micro-batch)
    members: list[list[int]] = [[] for _ in range(k)]
    for i in sorted(range(n), key=lambda i: (-lengths[i], i)):
        tokens, b = heapq.heappop(heap)
        members[b].append(i)
        heapq.heappush(heap, (tokens + lengths[i], b))
    return sorted((sorted(m) for m in members if m), key=lambda m: m[0])


def micro_batch_scales(micro_batches: Sequence[Sequence[int]], mask_N_T: torch.Tensor) -> torch.Tensor:
    """c_i (N,) float32 such that Σ_i c_i Σ_t M·ℓ / D = Σ_b (n_b/N) Σ_{i∈b} Σ_t M·ℓ / D_b (module docstring).

    ``micro_batches`` must cover every row of ``mask_N_T`` exactly once. An all-zero mask gives all zeros.
    """
    n = mask_N_T.shape[0]
    tokens_N = mask_N_T.to(torch.float32).sum(dim=-1)
    total = float(tokens_N.sum())
    scales_N = torch.zeros(n, dtype=torch.float32, device=mask_N_T.device)
    seen = 0
    for rows in micro_batches:
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=mask_N_T.device)
        seen += idx.numel()
        tokens_b = float(tokens_N[idx].sum())
        if tokens_b > 0:
            scales_N[idx] = (idx.numel() / n) * total / tokens_b
    if seen != n:
        raise ValueError(f"the micro-batches hold {seen} rows, the mask {n}")
    return scales_N


def micro_batch_token_mean(
    loss_N_T: torch.Tensor, mask_N_T: torch.Tensor, micro_batches: Sequence[Sequence[int]]
) -> torch.Tensor:
    """L_micro computed directly, micro-batch by micro-batch (the reference loop; module docstring)."""
    n = mask_N_T.shape[0]
    total = loss_N_T.new_zeros(())
    for rows in micro_batches:
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=mask_N_T.device)
        m = mask_N_T[idx].to(loss_N_T.dtype)
        tokens_b = m.sum()
        if tokens_b > 0:
            total = total + (idx.numel() / n) * (torch.where(m.bool(), loss_N_T[idx], 0.0).sum() / tokens_b)
    return total


def micro_batch_mass(micro_batches: Sequence[Sequence[int]], mask_N_T: torch.Tensor) -> float:
    """Σ_b (n_b / N)·1[D_b > 0]: the total weight per-micro-batch means give a loss term whose per-token value
    is 1 (a global mean gives 1). Below 1 when some micro-batches hold none of the term's tokens, e.g. SCOPE's
    MLE term when few rollouts are correct."""
    n = mask_N_T.shape[0]
    tokens_N = mask_N_T.to(torch.float32).sum(dim=-1)
    return sum(len(rows) / n for rows in micro_batches if float(tokens_N[list(rows)].sum()) > 0)
