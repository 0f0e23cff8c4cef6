"""Padding helpers: prompts are left-padded (they end at the same column), responses right-padded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Padded:
    """ids_N_T int64 and mask_N_T int64 (1 = real token)."""

    ids_N_T: torch.Tensor
    mask_N_T: torch.Tensor


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int, *, side: str, length: int | None = None
) -> Padded:
    """Stack variable-length id lists into (N, T) with ``pad_id``; ``side`` is "left" or "right".

    ``length`` pads to at least that many columns (default: the longest sequence).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max([len(s) for s in seqs] + [length or 0])
    ids_N_T = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask_N_T = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        if not seq:
            continue
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids_N_T[i, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask_N_T[i, cols] = 1
    return Padded(ids_N_T, mask_N_T)


def unpad(ids_N_T: torch.Tensor, mask_N_T: torch.Tensor) -> list[list[int]]:
    """The real tokens of each row, as lists."""
    return [row[m.bool()].tolist() for row, m in zip(ids_N_T, mask_N_T)]
