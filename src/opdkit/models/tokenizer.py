"""A character-level tokenizer for tiny models, built locally with ``tokenizers`` (no hub access).

Every printable ASCII character and the newline is one token, so any prompt of the synthetic tasks, the
verifiers' natural-language feedback and the SDPO reprompt template (docs/algorithms.md §4.4) can be encoded.
Seven special tokens come first: ``<pad> <bos> <eos> <unk>`` and the short role markers ``<|s|> <|u|> <|a|>``
(system, user, assistant), so a chat prompt costs one token per role.

The result is a ``transformers.PreTrainedTokenizerFast`` with a chat template; it saves with
``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained(path)`` like any real tokenizer::

    tok = build_char_tokenizer()
    tok.apply_chat_template([{"role": "user", "content": "1+2"}], add_generation_prompt=True, tokenize=False)
    # '<bos><|u|>1+2<|a|>'   (an assistant turn ends with <eos>)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CharSpecialTokens:
    """The special tokens, in vocabulary order (ids 0..6)."""

    pad: str = "<pad>"
    bos: str = "<bos>"
    eos: str = "<eos>"
    unk: str = "<unk>"
    system: str = "<|s|>"
    user: str = "<|u|>"
    assistant: str = "<|a|>"

    def as_list(self) -> list[str]:
        return [self.pad, self.bos, self.eos, self.unk, self.system, self.user, self.assistant]


SPECIAL_TOKENS = CharSpecialTokens()

# Printable ASCII (space .. tilde) and the newline: enough for prompts, feedback and the reprompt template.
CHARACTERS: tuple[str, ...] = (*(chr(c) for c in range(32, 127)), "\n")

# One role marker per message; the assistant's turn ends with EOS (that is what generation stops on). The
# other turns need no terminator because the next role marker already separates them.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|s|>"
    "{% elif message['role'] == 'user' %}<|u|>"
    "{% elif message['role'] == 'assistant' %}<|a|>"
    "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}{% endif %}"
    "{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|a|>{% endif %}"
)


def char_vocabulary(extra_chars: str = "") -> dict[str, int]:
    """Token -> id: the special tokens, then the characters, then any ``extra_chars`` not yet present."""
    tokens = SPECIAL_TOKENS.as_list() + list(CHARACTERS)
    tokens += [c for c in dict.fromkeys(extra_chars) if c not in tokens]
    return {tok: i for i, tok in enumerate(tokens)}


def build_char_tokenizer(extra_chars: str = "") -> Any:
    """A ``PreTrainedTokenizerFast`` over single characters with pad/bos/eos/unk and the chat template.

    Characters outside the vocabulary encode as ``<unk>``. No BOS/EOS is added by plain encoding; the chat
    template adds them. ``padding_side`` is left, the usual choice for decoder-only generation.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(char_vocabulary(extra_chars), unk_token=SPECIAL_TOKENS.unk))
    # Split into single characters ([\s\S] also matches the newline); Fuse joins them back without spaces.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS.as_list()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS.pad,
        bos_token=SPECIAL_TOKENS.bos,
        eos_token=SPECIAL_TOKENS.eos,
        unk_token=SPECIAL_TOKENS.unk,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=4096,
    )
