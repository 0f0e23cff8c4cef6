"""The key/value cache ``sample`` decodes with (``rollout.decode`` or Hugging Face ``generate``): prefilled
once per distinct prompt, and written in place.

- Shared prefill: the G samples of a prompt start from the same prefix, so the prompts' cache is computed for
  the distinct prompts and repeated for their G rows. For ``generate`` it covers the first P−1 columns
  (``generate`` runs the last prompt column and samples); for ``rollout.decode`` all P columns, whose last
  logits give the first token of every sample. Prefill cost drops from N·P to Q·P token positions.
- In-place appends: a ``DynamicLayer`` appends each new token with ``torch.cat``, which copies the whole
  cache of the layer every step (O(L²) copying for L tokens; on a small model about a quarter of a decode
  step on CPU). Here the layers keep buffers sized for the whole generation (prompt width + max_new_tokens)
  and expose views of their filled part, so an append writes one column. Attention sees exactly the same
  keys and values, so the tokens and log-probs are those of the default cache.

Both apply only to a plain ``DynamicCache`` of full-attention layers (what Llama-, Qwen- and Mistral-style
models use by default); other models (sliding-window, linear-attention, encoder-decoder caches) get
``generate``'s own cache.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from opdkit.core.sequence import position_ids_from_mask
from opdkit.rollout.padding import Padded


def is_plain_cache(cache: Any) -> bool:
    """A ``DynamicCache`` of full-attention ``DynamicLayer``s only: its rows can be copied by indexing."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    return type(cache) is DynamicCache and bool(layers) and all(type(la) is DynamicLayer for la in layers)


@functools.cache
def _preallocated_layer_type() -> type:
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose ``keys``/``values`` are views of buffers with room for ``capacity``
        positions; ``update`` writes the new positions in place (doubling the room if it runs out)."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = capacity
            self._views: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            # first use, keys replaced from outside (crop, reorder...), or out of room: copy into new buffers
            if self._views is None or self._views[0] is not self.keys or self._end() + new > self._room():
                self._rebuffer(key_states, value_states, extra=new)
            start, end = self._end(), self._end() + new
            self._key_buf[..., start:end, :].copy_(key_states)
            self._value_buf[..., start:end, :].copy_(value_states)
            self._set_views(end)
            return self.keys, self.values

        def _end(self) -> int:
            return self.keys.shape[-2] if self.keys.dim() == 4 else 0

        def _room(self) -> int:
            return self._key_buf.shape[-2]

        def _rebuffer(self, like_k: torch.Tensor, like_v: torch.Tensor, extra: int) -> None:
            """Buffers shaped like ``like_k``/``like_v`` (N, heads, ·, d) holding the current keys/values,
            with room for ``extra`` more positions."""
            length = self._end()
            room = max(self.capacity, 2 * (length + extra))
            key_buf = like_k.new_empty((*like_k.shape[:-2], room, like_k.shape[-1]))
            value_buf = like_v.new_empty((*like_v.shape[:-2], room, like_v.shape[-1]))
            if length:
                key_buf[..., :length, :].copy_(self.keys)
                value_buf[..., :length, :].copy_(self.values)
            self._key_buf, self._value_buf = key_buf, value_buf
            self._set_views(length)

        def _set_views(self, end: int) -> None:
            self.keys, self.values = self._key_buf[..., :end, :], self._value_buf[..., :end, :]
            self._views = (self.keys, self.values)

    return PreallocatedLayer


def preallocate(cache: Any, capacity: int) -> Any:
    """``cache`` (a plain ``DynamicCache``, empty or filled) with every layer writing in place."""
    layer_type = _preallocated_layer_type()
    layers = []
    for old in cache.layers:
        new = layer_type(capacity)
        if old.is_initialized and old.keys.dim() == 4:
            new.lazy_initialization(old.keys, old.values)
            new.keys, new.values = old.keys, old.values
            new._rebuffer(old.keys, old.values, extra=0)
        layers.append(new)
    cache.layers = layers
    return cache


@dataclass(frozen=True)
class Prefill:
    """cache: a plain cache of the prompts' first ``cache.get_seq_length()`` columns, written in place;
    last_logits_N_V: float32 logits after the whole prompt (when the prefill covered every column), else
    None."""

    cache: Any
    last_logits_N_V: torch.Tensor | None


def shared_prefill(model: Any, prompts: Padded, n: int, *, whole: bool = False) -> Prefill | None:
    """The cache of the prompts computed once per distinct prompt and repeated for its n samples (rows of a
    group are contiguous, as in ``sample``), or None when there is nothing to share or the cache is not
    plain. ``whole=False`` covers the first P−1 columns (``generate`` runs the last one itself; every
    prompt needs 2 real tokens), ``whole=True`` all P columns and also returns the last logits, from which
    the first token of all n samples is drawn (``rollout.decode``)."""
    width = prompts.ids_N_T.shape[1]
    shortest = int(prompts.mask_N_T.sum(-1).min())
    if not whole and (n == 1 or width < 2 or shortest < 2):
        return None
    if whole and shortest < 1:
        return None
    cols = width if whole else width - 1
    device = next(model.parameters()).device
    ids_Q_S = prompts.ids_N_T[:, :cols].to(device)
    mask_Q_S = prompts.mask_N_T[:, :cols].to(device)
    out = model(
        input_ids=ids_Q_S, attention_mask=mask_Q_S, position_ids=position_ids_from_mask(mask_Q_S),
        use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    cache = out.past_key_values
    if not is_plain_cache(cache):
        return None
    cache.batch_repeat_interleave(n)
    last = out.logits[:, -1].float().repeat_interleave(n, dim=0) if whole else None
    return Prefill(cache, last)


def generation_cache(model: Any, prompts: Padded, n: int, max_new_tokens: int, *, share: bool) -> Any:
    """The cache to pass to ``generate`` for ``n`` samples of each prompt (module docstring), or None to let
    ``generate`` build its own (a model whose cache is not plain)."""
    prefill = _prefill(model, prompts, n, max_new_tokens, share=share, whole=False)
    return None if prefill is None else prefill.cache


def decode_prefill(
    model: Any, prompts: Padded, n: int, max_new_tokens: int, *, share: bool
) -> Prefill | None:
    """The prefill ``rollout.decode`` starts from: with ``share`` the whole prompts once per distinct prompt
    (and their last logits), else an empty cache (the loop prefills every copy); None when the model's cache
    is not plain."""
    return _prefill(model, prompts, n, max_new_tokens, share=share, whole=True)


def _prefill(
    model: Any, prompts: Padded, n: int, max_new_tokens: int, *, share: bool, whole: bool
) -> Prefill | None:
    """``shared_prefill`` when ``share`` and it applies, else an empty cache; written in place with room for
    the prompts and ``max_new_tokens``. None when the model's cache is not plain."""
    from transformers.cache_utils import DynamicCache

    prefill = shared_prefill(model, prompts, n, whole=whole) if share else None
    if prefill is None:
        prefill = Prefill(DynamicCache(config=model.config), None)
        if not is_plain_cache(prefill.cache):
            return None
    preallocate(prefill.cache, prompts.ids_N_T.shape[1] + max_new_tokens)
    return prefill
