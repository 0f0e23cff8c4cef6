"""Rollouts: batched sampling with a KV cache (a lean decode loop, or Hugging Face ``generate``).

from opdkit.rollout import SamplingParams, encode_chats, sample

batch = sample(model, tok, encode_chats(tok, prompts), SamplingParams(n=8, max_new_tokens=16), seed=0)

Teacher-forced log-probs of the sampled responses follow the alignment of ``core.sequence``
(docs/algorithms.md §0); the trainer computes them in ``train.forward``.
"""

from opdkit.rollout.padding import Padded, pad_sequences, unpad
from opdkit.rollout.sampling import Rollout, SamplingParams, encode_chats, sample

__all__ = [
    "Padded",
    "Rollout",
    "SamplingParams",
    "encode_chats",
    "pad_sequences",
    "sample",
    "unpad",
]
