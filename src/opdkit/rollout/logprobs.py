"""Teacher-forced log-probabilities of given responses: the one alignment rule of docs/algorithms.md §0.

For ``seq = prompt ⊕ response`` with a left-padded prompt of width P and a right-padded response of width L,
response token t (0-based) sits at column P+t and is predicted by the logits at column P+t-1, so the response
logits are ``logits[:, P-1 : P+L-1]``. Logits are divided by the sampling temperature before any softmax
(lasgroup/SDPO dp_actor.py; TRL self_distillation_loss.py). Position ids come from the attention mask
(cumulative sum - 1), as Hugging Face ``generate`` computes them, so left padding changes nothing.

Only the last L+1 positions' logits are computed (``logits_to_keep``), so the prompt never costs an (N, P, V)
tensor. The same function serves the student (old log-probs), an external teacher and the self-teacher (which
passes its own reprompted prompt, of its own width P').
"""

from __future__ import annotations

from typing import Any

import torch


def position_ids_from_mask(mask_N_S: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only: (cumsum(mask) - 1), 0 on left padding. Shape (N, S) int64."""
    return (mask_N_S.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(
    model: Any,
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    response_ids_N_L: torch.Tensor,
    response_mask_N_L: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Float32 logits / T predicting each response token, shape (N, L, V) (docs/algorithms.md §0).

    Gradients flow when called outside ``torch.no_grad()`` (the student's forward).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    P, L = prompt_ids_N_P.shape[1], response_ids_N_L.shape[1]
    if P == 0:
        raise ValueError(
            "the prompt must hold at least one token (its last logit predicts the first response token)"
        )
    device = next(model.parameters()).device
    ids_N_S = torch.cat([prompt_ids_N_P, response_ids_N_L], dim=1).to(device)
    mask_N_S = torch.cat([prompt_mask_N_P, response_mask_N_L], dim=1).to(device)
    out = model(
        input_ids=ids_N_S,
        attention_mask=mask_N_S,
        position_ids=position_ids_from_mask(mask_N_S),
        logits_to_keep=L + 1,  # columns P-1 .. P+L-1; the last one predicts past the response
        use_cache=False,
    )
    logits_N_L_V = out.logits[:, :L, :]  # = full logits[:, P-1 : P+L-1]
    return logits_N_L_V.float() / temperature


def gather_logprobs(
    logits_N_L_V: torch.Tensor, ids_N_L: torch.Tensor, mask_N_L: torch.Tensor
) -> torch.Tensor:
    """log_softmax(logits) at ``ids``, zeroed where ``mask`` is 0. Shape (N, L) float32."""
    logp_N_L = torch.log_softmax(logits_N_L_V.float(), dim=-1).gather(-1, ids_N_L.unsqueeze(-1)).squeeze(-1)
    return logp_N_L * mask_N_L.to(logp_N_L.dtype)


def response_logprobs(
    model: Any,
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    response_ids_N_L: torch.Tensor,
    response_mask_N_L: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log softmax(logits / T) of each response token under ``model``, 0.0 at padding; (N, L) float32."""
    logits_N_L_V = response_logits(
        model, prompt_ids_N_P, prompt_mask_N_P, response_ids_N_L, response_mask_N_L, temperature=temperature
    )
    return gather_logprobs(
        logits_N_L_V, response_ids_N_L.to(logits_N_L_V.device), response_mask_N_L.to(logits_N_L_V.device)
    )
