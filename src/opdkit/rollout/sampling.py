"""Batched sampling with a key/value cache: G samples per prompt, seeded, with the sampler's own log-probs.

§1: each prompt is repeated G times with ``repeat_interleave``, so the members of a group are
contiguous and share one ``group_ids_N`` value. Generation stops at EOS or after ``max_new_tokens``; a
truncated response keeps its tokens in the mask. The response mask covers every token up to and including
the first EOS; padding after it is 0.

The sampler's log-prob of each chosen token is ``log_softmax(raw_logits / temperature)`` at that token
(before top-k / top-p filtering, the same quantity the trainer recomputes, §0), recorded one step at a time,
so no (N, T, V) tensor is kept. Greedy decoding (temperature 0) reports log_softmax(raw logits).
``SamplingParams(logprobs=False)`` skips the recording (an (N, V) log-softmax per generated token).

The cache comes from ``rollout.kvcache``: each prompt prefilled once for its G samples, and new tokens written
in place rather than appended by re-copying the cache (the same tokens and log-probs; only rounding differs).
``share_prompts=False`` prefills every copy. With ``SamplingParams.max_cache_tokens`` the prompts run in
chunks whose cache fits that many tokens, with the same samples as in one piece (``rollout.chunks``); the
stop tokens are the generation config's EOS and the chat template's end of turn (``rollout.stops``).
With a plain cache the tokens are sampled by ``rollout.decode``, a lean loop that samples from the
distribution Hugging Face ``generate`` samples from, with less work per token; models whose cache is not
plain go through ``generate`` itself (``use_generate=True`` forces it).

    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=16)
    batch = sample(model, tok, encode_chats(tok, [row["prompt"] for row in rows]), params, seed=0)
    batch.texts[0], batch.response_ids_N_T.shape, batch.group_ids_N
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from opdkit.rollout.chunks import TableDraw, concat_decoded, prompt_chunks
from opdkit.rollout.decode import Decoded, decode
from opdkit.rollout.kvcache import decode_prefill, generation_cache
from opdkit.rollout.padding import Padded, pad_sequences
from opdkit.rollout.stops import stop_token_ids


@dataclass(frozen=True)
class SamplingParams:
    """n: samples per prompt (G); temperature 0 = greedy; top_k 0 and top_p 1.0 = off; logprobs: record the
    sampler's log-prob of each chosen token (``Rollout.sampler_logp_N_T``)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    logprobs: bool = True
    max_cache_tokens: int = 0  # key/value cache budget: rows run in chunks of prompts under it (0 = all)

    def __post_init__(self) -> None:
        if self.max_cache_tokens < 0:
            raise ValueError(f"max_cache_tokens must be >= 0, got {self.max_cache_tokens}")
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"n and max_new_tokens must be >= 1, got n={self.n}, max_new_tokens={self.max_new_tokens}"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"bad sampling parameters: {self}")


@dataclass(frozen=True)
class Rollout:
    """N = prompts × n sequences; P prompt columns (left-padded), T response columns (right-padded).

    prompt_ids_N_P, prompt_mask_N_P: int64; response_ids_N_T, response_mask_N_T: int64 (EOS inside the mask);
    sampler_logp_N_T: float32 log_softmax(raw_logits / temperature) of each chosen token, 0.0 at padding
    (None when ``SamplingParams.logprobs`` is False);
    truncated_N: bool, no EOS within max_new_tokens; group_ids_N: int64, equal within a prompt's group;
    texts: the decoded responses (special tokens skipped).
    """

    prompt_ids_N_P: torch.Tensor
    prompt_mask_N_P: torch.Tensor
    response_ids_N_T: torch.Tensor
    response_mask_N_T: torch.Tensor
    sampler_logp_N_T: torch.Tensor | None
    truncated_N: torch.Tensor
    group_ids_N: torch.Tensor
    texts: list[str]

    def response_lists(self) -> list[list[int]]:
        """Each response's real token ids (EOS included when present)."""
        return [r[m.bool()].tolist() for r, m in zip(self.response_ids_N_T, self.response_mask_N_T)]


class _ChosenTokenLogprobs:
    """A logits processor that sees the raw logits of every step and keeps the chosen tokens' log-probs.

    ``generate`` applies user processors before the temperature/top-k/top-p warpers, so ``scores`` here are
    the raw logits. Step t's chosen token is only known at step t+1 (the last column of ``input_ids``), so one
    (N, V) log-prob tensor is carried between calls.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature if temperature > 0 else 1.0
        self.pending_N_V: torch.Tensor | None = None
        self.logps: list[torch.Tensor] = []

    def collect(self, input_ids: torch.Tensor) -> None:
        if self.pending_N_V is not None:
            chosen_N = input_ids[:, -1]
            self.logps.append(self.pending_N_V.gather(-1, chosen_N[:, None]).squeeze(-1))
            self.pending_N_V = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.collect(input_ids)
        self.pending_N_V = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores


def _response_mask(response_ids_N_T: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask_N_T, truncated_N): ones up to and including the first EOS; all ones when there is none."""
    is_eos_N_T = torch.isin(response_ids_N_T, torch.tensor(eos_ids, device=response_ids_N_T.device))
    seen_before_N_T = (is_eos_N_T.long().cumsum(-1) - is_eos_N_T.long()) > 0  # an EOS strictly earlier
    return (~seen_before_N_T).long(), ~is_eos_N_T.any(-1)


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    seed: int | None = None,
    first_group_id: int = 0,
    share_prompts: bool = True,
    use_generate: bool = False,
    draw: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Rollout:
    """Sample ``params.n`` responses for each prompt (unpadded id lists); see the module docstring.

    With ``seed`` the sampling is reproducible and the caller's global RNG state is left untouched; without it
    the global torch RNG is used (and advanced). Group ids are ``first_group_id + prompt index``.
    ``share_prompts=False`` prefills every copy of a prompt, and ``use_generate=True`` samples through
    ``generate`` even when ``rollout.decode`` could (the references the tests compare with); ``draw`` is
    ``rollout.decode``'s token draw (default inverse CDF; ``multinomial_draw`` takes the tokens ``generate``
    would from the same seed).
    """
    eos_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    prompts = pad_sequences(prompt_ids, pad_id, side="left")
    n = params.n
    group_ids_N = torch.arange(len(prompt_ids), dtype=torch.long).repeat_interleave(n) + first_group_id
    width = prompts.ids_N_T.shape[1]
    chunks = prompt_chunks(len(prompt_ids), n * (width + params.max_new_tokens), params.max_cache_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=_cuda_devices(device), enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            table = None
            if draw is None and not use_generate and params.temperature > 0:
                # every row's uniform numbers drawn up front: a row samples the same tokens in any chunk
                table = TableDraw.draw(params.max_new_tokens, len(prompt_ids) * n)
            parts = []
            for a, b in chunks:
                rows = Padded(prompts.ids_N_T[a:b], prompts.mask_N_T[a:b])
                chunk_draw = table.rows(a * n, b * n) if table is not None else draw
                parts.append(_sample_rows(model, rows, params, eos_ids, pad_id, share_prompts, use_generate,
                                          chunk_draw))  # fmt: skip
    finally:
        model.train(was_training)
    ids_N_P = prompts.ids_N_T.repeat_interleave(n, dim=0)
    mask_N_P = prompts.mask_N_T.repeat_interleave(n, dim=0)
    out = concat_decoded(parts, pad_id)
    return _assemble(tokenizer, eos_ids, pad_id, ids_N_P, mask_N_P, out, group_ids_N)


def _sample_rows(
    model: Any,
    prompts: Padded,
    params: SamplingParams,
    eos_ids: list[int],
    pad_id: int,
    share: bool,
    use_generate: bool,
    draw: Callable[[torch.Tensor], torch.Tensor] | None,
) -> Decoded:
    """``params.n`` samples of each of ``prompts`` with one key/value cache (one chunk of ``sample``)."""
    device = next(model.parameters()).device
    ids_N_P = prompts.ids_N_T.repeat_interleave(params.n, dim=0).to(device)
    mask_N_P = prompts.mask_N_T.repeat_interleave(params.n, dim=0).to(device)
    prefill = None
    if not use_generate:  # the lean loop runs in inference mode, so its prefill may too
        with torch.inference_mode():
            prefill = decode_prefill(model, prompts, params.n, params.max_new_tokens, share=share)
    if prefill is not None:
        return decode(
            model, ids_N_P, mask_N_P, prefill, temperature=params.temperature, top_k=params.top_k,
            top_p=params.top_p, max_new_tokens=params.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
            logprobs=params.logprobs, draw=draw,
        )  # fmt: skip
    cache = generation_cache(model, prompts, params.n, params.max_new_tokens, share=share)
    return _generate(model, ids_N_P, mask_N_P, cache, params, eos_ids, pad_id)


def _generate(
    model: Any,
    ids_N_P: torch.Tensor,
    mask_N_P: torch.Tensor,
    cache: Any,
    params: SamplingParams,
    eos_ids: list[int],
    pad_id: int,
) -> Decoded:
    """Sampling through Hugging Face ``generate`` (with ``cache`` when there is one), the sampler's log-probs
    recorded by ``_ChosenTokenLogprobs``."""
    from transformers import GenerationConfig, LogitsProcessorList

    greedy = params.temperature == 0
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else params.temperature,
        top_p=None if greedy else params.top_p,
        top_k=None if greedy else params.top_k,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        use_cache=True,
    )
    recorder = _ChosenTokenLogprobs(params.temperature) if params.logprobs else None
    saved_config = model.generation_config
    # generate() fills every field we leave unset from model.generation_config (a real checkpoint may carry a
    # repetition penalty, top-k 20, ...), which would silently change the distribution; give it a clean one.
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=pad_id, bos_token_id=saved_config.bos_token_id
    )
    try:
        out = model.generate(
            input_ids=ids_N_P,
            attention_mask=mask_N_P,
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder] if recorder is not None else []),
            **({"past_key_values": cache} if cache is not None else {}),
        )
    finally:
        model.generation_config = saved_config
    if recorder is not None:
        recorder.collect(out.sequences)  # the last step's chosen token
    logp_N_T = None if recorder is None else torch.stack(recorder.logps, dim=1)
    return Decoded(out.sequences[:, ids_N_P.shape[1] :], logp_N_T)


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _assemble(
    tokenizer: Any,
    eos_ids: list[int],
    pad_id: int,
    ids_N_P: torch.Tensor,
    mask_N_P: torch.Tensor,
    out: Decoded,
    group_ids_N: torch.Tensor,
) -> Rollout:
    mask_N_T, truncated_N = _response_mask(out.response_ids_N_T, eos_ids)
    logp_N_T = None if out.logp_N_T is None else out.logp_N_T * mask_N_T.float()
    response_ids_N_T = out.response_ids_N_T.masked_fill(mask_N_T == 0, pad_id)
    texts = tokenizer.batch_decode(
        [r[m.bool()].tolist() for r, m in zip(response_ids_N_T, mask_N_T)], skip_special_tokens=True
    )
    return Rollout(
        prompt_ids_N_P=ids_N_P.cpu(),
        prompt_mask_N_P=mask_N_P.cpu(),
        response_ids_N_T=response_ids_N_T.cpu(),
        response_mask_N_T=mask_N_T.cpu(),
        sampler_logp_N_T=None if logp_N_T is None else logp_N_T.cpu(),
        truncated_N=truncated_N.cpu(),
        group_ids_N=group_ids_N,
        texts=texts,
    )


def encode_chats(
    tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]], **chat_kwargs: Any
) -> list[list[int]]:
    """Token ids of each conversation through the tokenizer's chat template, ending in the generation prompt.

    ``chat_kwargs`` go to ``apply_chat_template`` (e.g. ``enable_thinking=False`` for Qwen3).
    """
    out = []
    for i, messages in enumerate(conversations):
        ids = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, **chat_kwargs
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        if not ids:
            raise ValueError(f"conversation {i}: the chat template produced no tokens")
        out.append(list(ids))
    return out
