"""Memory arithmetic of a decoder-only transformer run: parameters, key/value cache, activations.

Pure arithmetic on the model's dimensions (no weights), shared by the sampler's cache budget
(``rollout.sampling``) and ``opdkit plan``. For a Llama/Qwen-style decoder with hidden size h, L layers, a
attention heads and k key/value heads of width d, MLP width I (gated: three matrices) and vocabulary V:

    parameters per layer  = h·a·d (q) + 2·h·k·d (k, v) + a·d·h (o) + 3·h·I (gate, up, down) + 2·h (norms)
    parameters            = L · per layer + V·h (embeddings) + V·h (head, unless tied) + h (final norm)
    key/value cache       = 2 · L · k · d · bytes  per token (a key and a value per layer)

Activations kept for the backward pass, per token and layer (bytes b of the compute dtype, float32 residual
stream), counted as the tensors autograd saves in a Llama/Qwen layer with fused attention (no a×s×s scores):

    b·(2·h + a·d + 2·k·d + a·d + h) (attention: norm output, q, k, v, attention output, o input)
    + b·(h + 3·I + I)               (MLP: norm output, gate, up, activation, down input)
    + 4·2·h                         (the float32 residual stream into each norm)

With activation checkpointing only each layer's float32 input (4·h per token) is kept, plus one layer's full
set during its recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelDims:
    """The shape of a decoder-only transformer (what its ``config.json`` says)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False

    def parameters(self) -> int:
        """Total parameter count (module docstring; biases and q/k norms are ignored: < 0.1 %)."""
        h, a, k, d, i = self.hidden, self.heads, self.kv_heads, self.head_dim, self.intermediate
        per_layer = h * a * d + 2 * h * k * d + a * d * h + 3 * h * i + 2 * h
        head = 0 if self.tied_embeddings else self.vocab * h
        return self.layers * per_layer + self.vocab * h + head + h

    def kv_bytes_per_token(self, bytes_per_value: int) -> int:
        """Key/value cache bytes of one token (all layers)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value

    def activation_bytes_per_token(self, bytes_per_value: int, *, checkpointing: bool) -> int:
        """Bytes kept for the backward pass per token, all layers (module docstring)."""
        h, a, k, d, i = self.hidden, self.heads, self.kv_heads, self.head_dim, self.intermediate
        b = bytes_per_value
        layer = b * (2 * h + a * d + 2 * k * d + a * d + h) + b * (h + 4 * i) + 4 * 2 * h
        if checkpointing:
            return self.layers * 4 * h + layer  # each layer's input, and one layer recomputed at a time
        return self.layers * layer


def dims_from_config(config: Any) -> ModelDims:
    """``ModelDims`` from a Hugging Face config object or a ``config.json`` dict (Llama/Qwen/Mistral keys)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    text = get("text_config")  # multimodal wrappers keep the language model's dimensions here
    if text is not None:
        return dims_from_config(text)
    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    return ModelDims(
        hidden=hidden,
        layers=int(get("num_hidden_layers")),
        heads=heads,
        kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden // heads),
        intermediate=int(get("intermediate_size")),
        vocab=int(get("vocab_size")),
        tied_embeddings=bool(get("tie_word_embeddings", False)),
    )
