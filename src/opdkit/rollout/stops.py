"""Where generation stops: the generation config's EOS ids and the chat template's end-of-turn token.

A base checkpoint's ``generation_config.json`` often lists only ``<|endoftext|>``, while its chat template
ends an assistant turn with ``<|im_end|>``: stopping on the config alone never ends a chat turn (every
response runs to ``max_new_tokens``). The stop set is the union of both.
"""

from __future__ import annotations

from typing import Any


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Stop tokens: the generation config's EOS ids (the tokenizer's EOS when it has none) and the chat
    template's end-of-turn token (``end_of_turn_id``), in that order, without repeats."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return [i for i in dict.fromkeys([*ids, end_of_turn_id(tokenizer)]) if i is not None]


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message's content, or None.

    Read off the template itself (rendering ``user: x, assistant: y``), so it is ``<|im_end|>`` for
    ChatML/Qwen templates and the EOS for templates that end a turn with it. Cached on the tokenizer.
    """
    cached = getattr(tokenizer, "_opdkit_end_of_turn", "unset")
    if cached != "unset":
        return cached
    marker = "opdkit-end-of-turn-probe"
    try:
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        tail = text[text.rindex(marker) + len(marker) :]
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        special = set(getattr(tokenizer, "all_special_ids", [])) | set(
            getattr(tokenizer, "added_tokens_decoder", {}) or {}
        )
        found = ids[0] if ids and ids[0] in special else None
    except Exception:  # no or unusable template (jinja's errors are not ValueErrors): no end-of-turn token
        found = None
    tokenizer._opdkit_end_of_turn = found
    return found
