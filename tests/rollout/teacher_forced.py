"""Teacher-forced log-probs of given responses under a real model, through ``core.sequence``'s alignment.

The reference the sampling tests recompute the sampler's log-probs with. A plain module (not a conftest), so
tests import it by name.
"""

from __future__ import annotations

from typing import Any

import torch

from opdkit.core.sequence import pack, response_logits, token_logp


def teacher_forced_logprobs(
    model: Any,
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    response_ids_N_T: torch.Tensor,
    response_mask_N_T: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log softmax(logits / T) of each response token, 0.0 at padding -> (N, T) float32; gradients flow
    when called outside ``torch.no_grad()``."""
    packed = pack(prompt_ids_N_P, prompt_mask_N_P, response_ids_N_T, response_mask_N_T)
    logits_N_S_V = model(**packed.model_inputs(), use_cache=False).logits
    logp_N_T = token_logp(response_logits(logits_N_S_V, packed).float() / temperature, response_ids_N_T)
    return logp_N_T * response_mask_N_T.to(logp_N_T.dtype)
