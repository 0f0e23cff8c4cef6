"""Sampling in chunks of prompts under a key/value-cache budget, with the same samples as in one piece.

The cache of N rows decoding up to W = P + max_new_tokens positions holds N·W tokens (``paper/sc_sdpo`` on
Qwen3-8B: 256 rows × 4096 positions × 144 KiB ≈ 155 GB). ``sample`` therefore runs the prompts in chunks
whose rows hold at most ``SamplingParams.max_cache_tokens`` cache tokens, each chunk with its own cache.

For the samples not to depend on the chunking, the random numbers must not either: the inverse-CDF draw of
row i at step t uses U[t, i] from a (max_new_tokens, N) table drawn before any chunk runs (``TableDraw``).
On a CPU that table holds exactly the numbers the one-piece loop drew step by step (``torch.rand`` fills a
tensor in order), so the samples equal those of the unchunked sampler. Models sampled through ``generate``
(caches that are not plain) draw from ``generate``'s own RNG stream: chunked, their samples are valid draws of
the same distribution but not the unchunked ones.
"""

from __future__ import annotations

import torch

from opdkit.core.sampling import inverse_cdf_sample
from opdkit.rollout.decode import Decoded


def prompt_chunks(num_prompts: int, tokens_per_prompt: int, budget: int) -> list[tuple[int, int]]:
    """[start, stop) prompt ranges whose cache (``tokens_per_prompt`` each: n rows × width) fits ``budget``
    tokens; at least one prompt per chunk. ``budget`` 0: one chunk."""
    if num_prompts == 0:
        return []
    size = num_prompts if budget <= 0 else max(1, budget // max(1, tokens_per_prompt))
    return [(a, min(a + size, num_prompts)) for a in range(0, num_prompts, size)]


class TableDraw:
    """An inverse-CDF draw that takes row i's uniform number at step t from a prepared table U (T, N):
    step t of a call draws with U[t, rows] (one step per call, as ``rollout.decode`` calls its draw)."""

    def __init__(self, uniforms_T_N: torch.Tensor) -> None:
        self.uniforms_T_N = uniforms_T_N
        self.step = 0

    @classmethod
    def draw(cls, steps: int, rows: int) -> TableDraw:
        """A table of float64 uniforms from the global CPU RNG (kept on the CPU: T·N·8 bytes)."""
        return cls(torch.rand(steps, rows, dtype=torch.float64))

    def rows(self, start: int, stop: int) -> TableDraw:
        """A draw for rows [start, stop) only, starting at step 0."""
        return TableDraw(self.uniforms_T_N[:, start:stop])

    def __call__(self, probs_N_V: torch.Tensor) -> torch.Tensor:
        uniform_N = self.uniforms_T_N[self.step].to(probs_N_V.device, non_blocking=True)
        self.step += 1
        return inverse_cdf_sample(probs_N_V, uniform_N)


def concat_decoded(parts: list[Decoded], pad_id: int) -> Decoded:
    """The chunks' rows in order (on the CPU), responses right-padded with ``pad_id`` (log-probs with 0) to
    the longest chunk."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.response_ids_N_T.shape[1] for p in parts)

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(t.cpu(), (0, width - t.shape[1]), value=value)

    ids = torch.cat([pad(p.response_ids_N_T, pad_id) for p in parts])
    with_logp = all(p.logp_N_T is not None for p in parts)
    logp = torch.cat([pad(p.logp_N_T, 0.0) for p in parts]) if with_logp else None
    return Decoded(ids, logp)
