"""A lean sampling loop over a plain key/value cache: the tokens Hugging Face ``generate`` samples, with less
work per token.

``generate`` rebuilds its inputs every step (``prepare_inputs_for_generation``), grows and re-derives the
attention mask and position ids, builds a causal mask, runs a stopping-criteria list and concatenates the
whole sequence. For a small model on a CPU that bookkeeping is a large share of a decode step. This loop does
the same sampling with only what changes per step: it feeds the last token with its position, passes a 2-D
mask only when a prompt is left-padded (none is needed otherwise: a one-token query may attend to the whole
cache), and runs the forwards under ``torch.inference_mode``.

It draws from the same distribution as ``generate``: the raw float32 logits of the last position go through
Hugging Face's own warpers (temperature, top-k, top-p, added under the same conditions as in ``generate``),
then ``softmax``; greedy decoding takes the ``argmax`` of the raw logits; a finished row gets the pad token;
the loop ends when every row has emitted an EOS or after ``max_new_tokens``. The one difference is how a
token is drawn from the probabilities: ``core.sampling.inverse_cdf_sample`` with one uniform number per row,
where ``torch.multinomial`` draws one exponential number per vocabulary entry (4.6x slower for 32 rows of a
152k vocabulary on a CPU core). With ``draw=multinomial_draw`` the loop samples exactly the tokens
``generate`` samples from the same RNG state (tests/rollout/test_decode.py checks this token for token, and
the inverse-CDF draw's frequencies separately).

``rollout.sampling.sample`` uses it whenever ``rollout.kvcache`` gives a plain cache, and ``generate``
otherwise (sliding-window, linear-attention and encoder-decoder caches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from opdkit.core.sampling import inverse_cdf_sample
from opdkit.core.sequence import position_ids_from_mask
from opdkit.rollout.kvcache import Prefill


@dataclass(frozen=True)
class Decoded:
    """response_ids_N_T: int64, the sampled tokens (pad after a row's EOS), T <= max_new_tokens;
    logp_N_T: float32 log_softmax(raw_logits / temperature) of each sampled token (temperature 1 when greedy),
    or None."""

    response_ids_N_T: torch.Tensor
    logp_N_T: torch.Tensor | None


def _warpers(temperature: float, top_k: int, top_p: float) -> list[Any] | None:
    """Hugging Face's sampling warpers, under the conditions ``generate`` adds them; None when greedy."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if temperature == 0:
        return None
    warpers: list[Any] = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    return warpers


@torch.inference_mode()
def decode(
    model: Any,
    ids_N_P: torch.Tensor,
    mask_N_P: torch.Tensor,
    prefill: Prefill,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    logprobs: bool,
    draw: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Decoded:
    """Sample up to ``max_new_tokens`` tokens after left-padded prompts ``ids_N_P`` / ``mask_N_P``.

    ``prefill`` (``rollout.kvcache.decode_prefill``) holds a plain cache of the prompts' first S columns:
    S = P with the logits after the prompt (the first token is drawn from them), or S = 0 (the first forward
    runs the prompts). The model must be in eval mode. Uses (and advances) the global torch RNG, as
    ``generate`` does. ``draw`` maps (N, V) probabilities to (N,) token ids (default ``inverse_cdf_draw``).
    """
    n, width = ids_N_P.shape
    cache, logits_N_V = prefill.cache, prefill.last_logits_N_V
    seen = cache.get_seq_length()
    # 2-D mask of every column there will be, sliced to the filled part each step (only with left padding)
    mask_N_W = (
        None if bool(mask_N_P.all()) else torch.cat([mask_N_P, mask_N_P.new_ones(n, max_new_tokens)], -1)
    )
    positions_N_P = position_ids_from_mask(mask_N_P)
    input_N_S, pos_N_S = ids_N_P[:, seen:], positions_N_P[:, min(seen, width - 1) :]
    warpers, draw = _warpers(temperature, top_k, top_p), draw or inverse_cdf_draw
    eos_E = torch.tensor(eos_ids, device=ids_N_P.device)
    unfinished_N = torch.ones(n, dtype=torch.bool, device=ids_N_P.device)
    tokens, logps = [], []
    for step in range(max_new_tokens):
        if logits_N_V is None:
            out = model(
                input_ids=input_N_S, position_ids=pos_N_S, past_key_values=cache, use_cache=True,
                logits_to_keep=1, attention_mask=None if mask_N_W is None else mask_N_W[:, : width + step],
            )  # fmt: skip
            logits_N_V = out.logits[:, -1].float()
        next_N = torch.where(unfinished_N, _choose(logits_N_V, warpers, input_N_S, draw), pad_id)
        tokens.append(next_N)
        if logprobs:  # of the raw logits at the sampling temperature (§0), not of the warped ones
            logp_N_V = torch.log_softmax(logits_N_V / (temperature or 1.0), dim=-1)
            logps.append(logp_N_V.gather(-1, next_N[:, None]).squeeze(-1))
        unfinished_N = unfinished_N & ~torch.isin(next_N, eos_E)
        if not bool(unfinished_N.any()):
            break
        input_N_S, pos_N_S, logits_N_V = next_N[:, None], pos_N_S[:, -1:] + 1, None
    # clones leave inference mode's tensors here: the caller may use them in autograd (e.g. as embedding ids)
    with torch.inference_mode(False):
        response_ids_N_T = torch.stack(tokens, dim=1).clone()
        logp_N_T = torch.stack(logps, dim=1).clone() if logprobs else None
    return Decoded(response_ids_N_T, logp_N_T)


def inverse_cdf_draw(probs_N_V: torch.Tensor) -> torch.Tensor:
    """One token per row by inverting the CDF with a uniform number from the global RNG (N,) int64."""
    uniform_N = torch.rand(probs_N_V.shape[0], device=probs_N_V.device, dtype=torch.float64)
    return inverse_cdf_sample(probs_N_V, uniform_N)


def multinomial_draw(probs_N_V: torch.Tensor) -> torch.Tensor:
    """One token per row as ``generate`` draws it, (N,) int64."""
    return torch.multinomial(probs_N_V, num_samples=1).squeeze(1)


def _choose(
    logits_N_V: torch.Tensor,
    warpers: list[Any] | None,
    input_N_S: torch.Tensor,
    draw: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The next token of each row: argmax of the raw logits when greedy (``warpers`` None), else warp,
    softmax and ``draw``."""
    if warpers is None:
        return logits_N_V.argmax(dim=-1)
    scores_N_V = logits_N_V
    for warp in warpers:
        scores_N_V = warp(input_N_S, scores_N_V)
    return draw(torch.softmax(scores_N_V, dim=-1))
