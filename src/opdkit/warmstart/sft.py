"""Supervised fine-tuning on (prompt, target) token pairs: the engine of the warm start.

The loss is the token-mean cross-entropy over target tokens only (the prompt is context, never a label).
A step takes several micro-batches, typically one per prompt format, so a 30-token plain prompt is never
padded to the length of a 120-token feedback prompt; the gradient equals that of one mixed batch because
each micro-batch's summed loss is divided by the step's total target-token count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from opdkit.rollout import pad_sequences


@dataclass(frozen=True)
class SftExample:
    """prompt_ids: the chat-formatted prompt; target_ids: the completion's tokens followed by EOS."""

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


@dataclass(frozen=True)
class SftBatch:
    """Right-padded ``prompt ⊕ target``: ids_N_T, mask_N_T, and labels_N_T (-100 off the target)."""

    ids_N_T: torch.Tensor
    mask_N_T: torch.Tensor
    labels_N_T: torch.Tensor

    @property
    def num_target_tokens(self) -> int:
        return int((self.labels_N_T != -100).sum())


def collate(examples: Sequence[SftExample], pad_id: int) -> SftBatch:
    """Stack examples into one right-padded batch with labels only on target tokens."""
    padded = pad_sequences([e.prompt_ids + e.target_ids for e in examples], pad_id, side="right")
    labels_N_T = torch.full_like(padded.ids_N_T, -100)
    for i, e in enumerate(examples):
        start = len(e.prompt_ids)
        labels_N_T[i, start : start + len(e.target_ids)] = padded.ids_N_T[
            i, start : start + len(e.target_ids)
        ]
    return SftBatch(padded.ids_N_T, padded.mask_N_T, labels_N_T)


def summed_loss(model: Any, batch: SftBatch) -> torch.Tensor:
    """Sum of target-token cross-entropies (logits at column j predict the token at column j+1)."""
    device = next(model.parameters()).device
    logits_N_T_V = model(input_ids=batch.ids_N_T.to(device), attention_mask=batch.mask_N_T.to(device)).logits
    logits = logits_N_T_V[:, :-1].reshape(-1, logits_N_T_V.shape[-1]).float()
    labels = batch.labels_N_T[:, 1:].reshape(-1).to(device)
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def sft_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[SftBatch],
    *,
    max_grad_norm: float = 1.0,
) -> float:
    """One optimizer step over the micro-batches; returns the token-mean loss. Skips non-finite losses."""
    total_tokens = max(1, sum(b.num_target_tokens for b in micro_batches))
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for batch in micro_batches:
        loss = summed_loss(model, batch) / total_tokens
        loss.backward()
        loss_sum += float(loss.detach())
    if not torch.isfinite(torch.tensor(loss_sum)):
        optimizer.zero_grad(set_to_none=True)  # a non-finite loss skips the update (docs/architecture.md)
        return loss_sum
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss_sum
