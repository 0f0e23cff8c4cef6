"""Tiny Llama- or Qwen2-family causal LMs from a config, and one save/load path for tiny and real models.

A 2-layer, hidden-128 model over the character vocabulary has ~0.5 M parameters and trains at a few hundred
steps a minute on one CPU thread (measured). It is an ordinary ``transformers`` model: ``save_pretrained`` /
``AutoModelForCausalLM.from_pretrained(path)`` work on it exactly as on a real checkpoint, so the trainer
never needs to know which kind it got::

    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(family="qwen2", num_layers=2), tok, seed=0)
    save_pretrained_atomic(model, tok, "runs/tiny")
    model, tok = load_pretrained("runs/tiny")          # the same call loads a real model path
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opdkit.core.registry import Registry


@dataclass(frozen=True)
class TinyModelConfig:
    """Architecture of a tiny decoder.

    family: a name in ``MODEL_FAMILIES`` ("llama" or "qwen2").
    hidden_size, num_layers, num_heads, intermediate_size: the usual sizes; num_kv_heads None = num_heads.
    max_position_embeddings: longest prompt + response the model accepts (SDPO teacher prompts included).
    tie_word_embeddings: share the input embedding and the output projection (fewer parameters).
    initializer_range: standard deviation of the initial weights (transformers' default 0.02).
    """

    family: str = "llama"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02


def _common_kwargs(cfg: TinyModelConfig, tokenizer: Any) -> dict[str, Any]:
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads or cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _llama(kwargs: dict[str, Any]) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**kwargs))


def _qwen2(kwargs: dict[str, Any]) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**kwargs))


MODEL_FAMILIES: Registry[Callable[[dict[str, Any]], Any]] = Registry("model family")
MODEL_FAMILIES.add("llama", _llama)
MODEL_FAMILIES.add("qwen2", _qwen2)


def build_tiny_model(config: TinyModelConfig, tokenizer: Any, *, seed: int = 0) -> Any:
    """A freshly initialised float32 causal LM (eval mode); vocabulary and special ids match ``tokenizer``.

    The initialisation is seeded without disturbing the caller's global RNG state.
    """
    import torch
    from transformers import GenerationConfig

    factory = MODEL_FAMILIES.get(config.family)
    kwargs = _common_kwargs(config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(kwargs)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return model.eval()


def tiny_config_dict(config: TinyModelConfig) -> dict[str, Any]:
    """The config as a plain dict (for hashing and YAML)."""
    return asdict(config)


@contextmanager
def _progress_bars_off() -> Iterator[None]:
    """Silence transformers' progress bars (one per tiny checkpoint saved or loaded would flood logs)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def save_pretrained_atomic(model: Any, tokenizer: Any, path: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer into ``path`` atomically: a temp folder beside it, then rename.

    An existing folder at ``path`` is replaced only once the new one is complete, so a crash never leaves a
    half-written model where a loader would find it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with _progress_bars_off():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@dataclass(frozen=True)
class LoadedModel:
    """A model (eval mode) and its tokenizer."""

    model: Any
    tokenizer: Any


def load_pretrained(path: str | os.PathLike, *, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load any local causal-LM folder (tiny or real) with its tokenizer; never touches the hub."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a saved model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with _progress_bars_off():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer)
