"""Rollouts: batched sampling with a KV cache (a lean decode loop, or Hugging Face ``generate``) and
teacher-forced log-probs (docs/algorithms.md §0, §1).

from opdkit.rollout import SamplingParams, encode_chats, sample, response_logprobs

batch = sample(model, tok, encode_chats(tok, prompts), SamplingParams(n=8, max_new_tokens=16), seed=0)
logp_N_L = response_logprobs(model, batch.prompt_ids_N_P, batch.prompt_mask_N_P,
                             batch.response_ids_N_L, batch.response_mask_N_L, temperature=1.0)
"""

from opdkit.rollout.logprobs import (
    gather_logprobs,
    position_ids_from_mask,
    response_logits,
    response_logprobs,
)
from opdkit.rollout.padding import Padded, pad_sequences, unpad
from opdkit.rollout.sampling import Rollout, SamplingParams, encode_chats, sample

__all__ = [
    "Padded",
    "Rollout",
    "SamplingParams",
    "encode_chats",
    "gather_logprobs",
    "pad_sequences",
    "position_ids_from_mask",
    "response_logits",
    "response_logprobs",
    "sample",
    "unpad",
]
