"""A tiny random Llama with a character tokenizer, built locally (no downloads), and reference log-probs.

A plain module (not a conftest) so that any test folder can import it by name: a folder's own conftest
would shadow ``tests/conftest.py`` for ``from conftest import ...`` (so tests never import from a conftest).
"""

from __future__ import annotations

from pathlib import Path

import torch

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +-*=.,?!\n"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
SERVER_API_KEY = "test-key-123"


def build_tiny_lm(path: Path, *, seed: int = 0, reverse_chars: bool = False) -> Path:
    """Save a character tokenizer (50 ids) and a random 2-layer Llama to ``path``.

    ``reverse_chars`` gives the characters the opposite ids: the same vocabulary size and special tokens with
    a different mapping, i.e. a tokenizer a teacher must refuse.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = CHARS[::-1] if reverse_chars else CHARS
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one char, one token
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,  # peakier than the default 0.02, so top-k orders are clear
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def local_logprobs(model, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log softmax of the logits of one unpadded forward: row j is the distribution of token j+1, (L, V)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits / temperature, dim=-1)


def save_tiny_pair(root: Path) -> dict[str, Path]:
    """A 1-layer, hidden-32 student (seed 0) and a differently-initialised teacher (seed 1) with opdkit's own
    character tokenizer, saved under ``root/student`` and ``root/teacher``: the pair the trainer and
    reliability suites run on."""
    from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model, save_pretrained_atomic

    tok = build_char_tokenizer()
    dirs = {}
    for name, seed in (("student", 0), ("teacher", 1)):
        model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2), tok, seed=seed)
        dirs[name] = save_pretrained_atomic(model, tok, root / name)
    return dirs
