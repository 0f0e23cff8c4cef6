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


# the chunked losses' two (chunk, V) float32 buffers (core.chunked.DEFAULT_CHUNK_ELEMENTS each)
CHUNKED_LOGIT_BYTES = 2 * (24 << 20) * 4


@dataclass(frozen=True)
class RunShape:
    """What a training run puts on one device, besides the student's dimensions.

    rows: rollouts per step (Q·G); prompt_tokens/response_tokens: the longest prompt and response;
    eval_rows/eval_response_tokens: one evaluation batch (prompts × k) and its response limit;
    micro_rows: rows per forward/backward; compute_bytes: 2 for bfloat16/float16, 4 for float32;
    self_teacher_copies: float32 copies of the student the self-teacher keeps (EMA or base: 1; live: 0);
    teacher: the local external teacher's dimensions (None: none, or on its own server);
    cache_tokens: the sampler's key/value budget (0: every row at once); checkpointing: activation
    checkpointing; hidden_state_losses: the chunked loss path (no (rows, T, V) logits)."""

    rows: int
    prompt_tokens: int
    response_tokens: int
    eval_rows: int
    eval_response_tokens: int
    micro_rows: int
    compute_bytes: int
    self_teacher_copies: int = 0
    teacher: ModelDims | None = None
    cache_tokens: int = 0
    checkpointing: bool = False
    hidden_state_losses: bool = True


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per item; ``peak`` = what is always resident + the largest phase (rollout, evaluation, update),
    since gradients are freed before the rollout and the caches after it."""

    parameters: int
    resident: dict[str, int]
    phases: dict[str, dict[str, int]]

    @property
    def peak(self) -> int:
        return sum(self.resident.values()) + max(sum(p.values()) for p in self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: sum(self.phases[k].values()))


def _cache_bytes(dims: ModelDims, rows: int, width: int, shape: RunShape) -> int:
    tokens = rows * width
    if shape.cache_tokens > 0:  # chunks of whole prompts; at least one row's worth
        tokens = min(tokens, max(shape.cache_tokens, width))
    return tokens * dims.kv_bytes_per_token(shape.compute_bytes)


def plan_memory(dims: ModelDims, shape: RunShape) -> MemoryPlan:
    """Per-device bytes of a run (module docstring for the per-token terms):

    resident: float32 weights 4·P, AdamW moments 8·P, self-teacher 4·P per copy, local teacher b·P_T;
    rollout: cache rows·(prompt + response)·kv bytes per token;
    evaluation: the same for one evaluation batch;
    update: float32 gradients 4·P, autocast's low-precision weight copies b·P (not in float32),
    activations micro_rows·(prompt + response)·per-token bytes, logits (chunked buffers, or rows·T·V·4·3).
    """
    p, b = dims.parameters(), shape.compute_bytes
    resident = {"weights (float32 master)": 4 * p, "optimizer (AdamW, float32)": 8 * p}
    if shape.self_teacher_copies:
        resident["self-teacher (float32)"] = 4 * p * shape.self_teacher_copies
    if shape.teacher is not None:
        resident["external teacher"] = shape.teacher.parameters() * b
    width = shape.prompt_tokens + shape.response_tokens
    eval_width = shape.prompt_tokens + shape.eval_response_tokens
    act = dims.activation_bytes_per_token(b, checkpointing=shape.checkpointing)
    logits = (
        CHUNKED_LOGIT_BYTES
        if shape.hidden_state_losses
        else shape.micro_rows * shape.response_tokens * dims.vocab * 4 * 3
    )
    update = {"gradients (float32)": 4 * p, "activations": shape.micro_rows * width * act, "logits": logits}
    if b < 4:
        update["autocast weight copies"] = b * p
    phases = {
        "rollout": {"KV cache": _cache_bytes(dims, shape.rows, width, shape)},
        "evaluation": {"KV cache": _cache_bytes(dims, shape.eval_rows, eval_width, shape)},
        "update": update,
    }
    return MemoryPlan(parameters=p, resident=resident, phases=phases)
