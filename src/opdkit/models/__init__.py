"""Models and tokenizers: a local character tokenizer, tiny Llama/Qwen2 models, one save/load path.

    from opdkit.models import build_char_tokenizer, build_tiny_model, TinyModelConfig, load_pretrained

    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=128, num_layers=2), tok, seed=0)

``transformers`` is imported only when one of these functions runs, so importing this package is cheap.
"""

from opdkit.models.tiny import (
    MODEL_FAMILIES,
    LoadedModel,
    TinyModelConfig,
    build_tiny_model,
    load_pretrained,
    save_pretrained_atomic,
    tiny_config_dict,
)
from opdkit.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_char_tokenizer, char_vocabulary

__all__ = [
    "CHAT_TEMPLATE",
    "MODEL_FAMILIES",
    "SPECIAL_TOKENS",
    "LoadedModel",
    "TinyModelConfig",
    "build_char_tokenizer",
    "build_tiny_model",
    "char_vocabulary",
    "load_pretrained",
    "save_pretrained_atomic",
    "tiny_config_dict",
]
