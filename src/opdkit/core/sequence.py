"""Packing prompt ⊕ response for a causal LM forward, and aligning its logits with the response tokens.

docs/algorithms.md §0 "Logit alignment". Prompts are left-padded to P columns, responses right-padded to T:

    input_ids      = [prompt_ids_N_P | response_ids_N_T]            (N, P+T)
    attention_mask = [prompt_mask    | response_mask]
    position_ids   = cumsum(attention_mask) − 1, clamped at 0       (so left padding does not shift positions)

Response token t (0-based) sits at column P+t and is predicted by the logits at column P+t−1, so the
response logits are ``logits[:, P−1 : P+T−1]``. A teacher with its own prompt (SDPO's reprompted context)
uses the same rule with its own P'. The model call itself is the caller's (this module imports no model
library)::

    packed = pack(prompt_ids, prompt_mask, response_ids, response_mask)
    logits = model(**packed.model_inputs()).logits
    logp_N_T = token_logp(response_logits(logits, packed) / temperature, response_ids)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packed:
    """A packed batch: ``input_ids``, ``attention_mask``, ``position_ids`` (N, P+T), ``prompt_len`` = P."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_len: int
    response_len: int

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def position_ids_from_mask(mask_N_S: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only: cumsum(mask) − 1, 0 on left padding -> (N, S) int64."""
    return (mask_N_S.long().cumsum(-1) - 1).clamp(min=0)


def pack(
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    response_ids_N_T: torch.Tensor,
    response_mask_N_T: torch.Tensor,
) -> Packed:
    """Concatenate left-padded prompts and right-padded responses; positions from the attention mask."""
    if prompt_ids_N_P.shape[0] != response_ids_N_T.shape[0]:
        raise ValueError("prompts and responses have different row counts")
    if prompt_ids_N_P.shape[1] == 0:
        raise ValueError("every row needs at least one prompt token (a BOS or chat header)")
    input_ids = torch.cat([prompt_ids_N_P, response_ids_N_T], dim=1)
    attention_mask = torch.cat([prompt_mask_N_P, response_mask_N_T], dim=1).to(torch.long)
    position_ids = position_ids_from_mask(attention_mask)
    return Packed(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        prompt_len=prompt_ids_N_P.shape[1],
        response_len=response_ids_N_T.shape[1],
    )


def response_logits(logits_N_S_V: torch.Tensor, packed: Packed) -> torch.Tensor:
    """The logits (N, S = P+T, V) that predict each response token: ``logits[:, P−1 : P+T−1]`` -> (N, T, V).

    Also accepts hidden states (N, P+T, H): the same positions are returned.
    """
    start = packed.prompt_len - 1
    return logits_N_S_V[:, start : start + packed.response_len]


def token_logp(logits_N_T_V: torch.Tensor, tokens_N_T: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position -> (N, T) float32, without materialising a log-softmax copy.

    Divide the logits by the temperature first.
    """
    logits = logits_N_T_V.to(torch.float32)
    chosen = logits.gather(-1, tokens_N_T.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to a (N, P) id tensor and its mask."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def right_pad(
    rows: list[list[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to a (N, T) id tensor and its mask (T = ``width`` or the longest row)."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r) > width:
            raise ValueError(f"row {i} has {len(r)} tokens, more than the width {width}")
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids, mask
