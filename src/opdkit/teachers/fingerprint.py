"""Tokenizer identity: a small fingerprint that two processes can compare without sharing files.

External teachers receive the student's token ids as-is (docs/algorithms.md §5.1, §5.7: "Student and teacher
tokenizers must match exactly"), so a teacher server and its client must agree on the id of every token. The
fingerprint holds:

- ``vocab_size``: ``len(tokenizer)`` (base vocabulary plus added tokens);
- ``vocab_sha256``: SHA-256 of the sorted ``(token, id)`` pairs of ``tokenizer.get_vocab()``;
- ``special_token_ids``: the bos/eos/pad/unk ids (None when the tokenizer has none);
- ``probe_sha256``: SHA-256 of the ids of ``PROBE_TEXTS``, encoded without and with special tokens, which
  catches tokenizers with the same vocabulary but different merges, normalisers or pre-tokenizers.

``opdkit serve-teacher`` publishes it in ``GET /v1/models``; ``ServerTeacher.check_tokenizer`` compares it
with the student's and names every field that differs. A stock vLLM server publishes no fingerprint; the
client then compares the server's ``/tokenize`` output on ``PROBE_TEXTS`` instead.

Tokenizers are duck-typed (``get_vocab``, ``__len__``, ``__call__``, ``*_token_id``): no transformers import.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PROBE_TEXTS: tuple[str, ...] = (
    "Let x = 12; then 3x + 7 = 43, so the answer is \\boxed{43}.",
    "  Whitespace\truns,\n\nnewlines and MIXED case: Hello, World!",
    "Unicode: café, naïve, Straße, 数学, ∑_{i=1}^{n} i² ≥ 0, emoji 🙂.",
    "def f(n):\n    return n * (n - 1) // 2  # code-like text",
)
"""Texts whose token ids two tokenizers must agree on (digits, LaTeX, whitespace, non-ASCII, code)."""

SPECIAL_TOKENS: tuple[str, ...] = ("bos", "eos", "pad", "unk")


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode()).hexdigest()


def encode_probes(tokenizer: Any) -> list[list[int]]:
    """Ids of every probe text, first without and then with special tokens (2 * len(PROBE_TEXTS) lists)."""
    return [
        [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]
        for special in (False, True)
        for text in PROBE_TEXTS
    ]


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """The JSON-serialisable fingerprint described in the module docstring."""
    vocab = sorted((str(tok), int(idx)) for tok, idx in tokenizer.get_vocab().items())
    return {
        "vocab_size": len(tokenizer),
        "vocab_sha256": _sha256(vocab),
        "special_token_ids": {name: getattr(tokenizer, f"{name}_token_id", None) for name in SPECIAL_TOKENS},
        "probe_sha256": _sha256(encode_probes(tokenizer)),
    }


def fingerprint_differences(teacher: dict[str, Any], student: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match).

    A key missing on one side counts as a difference, so a fingerprint from another opdkit version never
    passes silently.
    """
    diffs = []
    for key in sorted(set(teacher) | set(student)):
        t, s = teacher.get(key, "<missing>"), student.get(key, "<missing>")
        if key == "special_token_ids" and isinstance(t, dict) and isinstance(s, dict):
            diffs += [
                f"{name}_token_id: teacher {t.get(name)} vs student {s.get(name)}"
                for name in sorted(set(t) | set(s))
                if t.get(name) != s.get(name)
            ]
        elif t != s:
            diffs.append(f"{key}: teacher {t} vs student {s}")
    return diffs
