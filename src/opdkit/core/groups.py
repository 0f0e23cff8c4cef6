"""Group bookkeeping: rollouts of the same prompt form a group identified by an int64 id.

Groups need not be contiguous and ids need not be 0..P-1: ``group_index`` maps arbitrary ids to dense
indices 0..P-1 (in increasing id order) so that per-group sums are one ``index_add_``.

Example::

    idx = group_index(torch.tensor([7, 3, 7, 3]))     # inverse_N = [1, 0, 1, 0], sizes_P = [2, 2]
    group_mean(torch.tensor([1., 0., 0., 0.]), idx)   # -> [0.0, 0.5] per group
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupIndex:
    """Dense group indices.

    inverse_N: int64, the dense group index (0..P-1) of each sequence.
    sizes_P: int64, the number of sequences in each group.
    ids_P: the original group id of each dense group.
    """

    inverse_N: torch.Tensor
    sizes_P: torch.Tensor
    ids_P: torch.Tensor

    @property
    def num_groups(self) -> int:
        return int(self.sizes_P.numel())


def group_index(group_ids_N: torch.Tensor) -> GroupIndex:
    """Map arbitrary int64 group ids to dense indices; see the module docstring."""
    if group_ids_N.dim() != 1:
        raise ValueError(f"group_ids_N must be 1-D, got shape {tuple(group_ids_N.shape)}")
    ids_P, inverse_N, sizes_P = torch.unique(group_ids_N, return_inverse=True, return_counts=True)
    return GroupIndex(inverse_N=inverse_N, sizes_P=sizes_P, ids_P=ids_P)


def group_sum(x_N: torch.Tensor, index: GroupIndex) -> torch.Tensor:
    """Σ of x over the members of each group -> (P,) (differentiable)."""
    out_P = torch.zeros(index.num_groups, dtype=x_N.dtype, device=x_N.device)
    return out_P.index_add(0, index.inverse_N, x_N)


def group_mean(x_N: torch.Tensor, index: GroupIndex) -> torch.Tensor:
    """Mean of x over the members of each group -> (P,)."""
    return group_sum(x_N, index) / index.sizes_P.to(x_N.dtype)


def group_max(x_N: torch.Tensor, index: GroupIndex) -> torch.Tensor:
    """Max of x over the members of each group -> (P,); -inf for no member (cannot happen for sizes > 0)."""
    out_P = torch.full((index.num_groups,), float("-inf"), dtype=x_N.dtype, device=x_N.device)
    return out_P.scatter_reduce(0, index.inverse_N, x_N, reduce="amax", include_self=True)


def sequence_mean(x_N_T: torch.Tensor, mask_N_T: torch.Tensor) -> torch.Tensor:
    """Length-normalised sum over the valid tokens of each row: Σ_t m·x / max(1, Σ_t m) -> (N,).

    docs/algorithms.md §5.3: the mean log-prob of a response (a zero-length response gives 0, i.e. PPL = 1).
    Masked positions may hold anything, NaN included: they are selected away, not multiplied.
    """
    mask = mask_N_T.to(torch.bool)
    total_N = torch.where(mask, x_N_T, torch.zeros_like(x_N_T)).sum(dim=-1)
    return total_N / mask.sum(dim=-1).clamp(min=1).to(x_N_T.dtype)
