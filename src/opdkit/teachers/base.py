"""The external-teacher protocol (OPD, SCOPE): score the student's own tokens under a teacher.

A teacher receives the unpadded token ids of each prompt and of the student's response (the same tokenizer
as the student; docs/algorithms.md §5.1) and returns the teacher's log-probability of every response token.
Rows whose scores could not be obtained are marked invalid in ``valid_N`` and must be excluded from the loss
and from SCOPE's weights; their log-probs are NaN, never zeros (a zero would look like a perfect teacher).

Implementations register a factory in ``TEACHERS`` under their ``teacher.kind`` name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from opdkit.core.registry import Registry


@dataclass(frozen=True)
class TeacherScores:
    """Teacher scores for N rows, right-padded to T response tokens.

    logp_N_T: float32 log π_T(y_t | x, y_<t) of each response token; 0.0 at padding; NaN on invalid rows
      (the whole row, padding included).
    valid_N: bool, True where the row was scored completely.
    topk_ids_N_T_K / topk_logp_N_T_K: the teacher's top-K alternatives per position, most likely first
      (``score(top_k=K)`` with K > 0; docs/algorithms.md §3.3 remote-teacher variant); None when top_k == 0.
      Padding: id 0 and log-prob 0.0; invalid rows: id 0 and NaN log-probs.
    stats: counters for logging (``teacher/failed_rows``, ``teacher/retries``, ...).
    row_flags_N: bool rows the teacher marks for diagnostics only (the unreliable teacher's corrupted
      questions); None when it marks none. Never used by a loss.
    """

    logp_N_T: torch.Tensor
    valid_N: torch.Tensor
    topk_ids_N_T_K: torch.Tensor | None = None
    topk_logp_N_T_K: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
    row_flags_N: torch.Tensor | None = None

    @property
    def failed_rows(self) -> int:
        """Rows without scores in this call (the loop's consecutive-failure stop counts calls with any)."""
        return int((~self.valid_N).sum())


class Teacher(Protocol):
    """Scores student responses; see the module docstring."""

    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        top_k: int = 0,
        pad_to: int | None = None,
    ) -> TeacherScores:
        """Teacher log-probs of ``response_ids[i]`` given ``prompt_ids[i]``, padded to ``pad_to`` columns
        (default: the longest response)."""
        ...

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise ``ValueError`` naming the difference when ``tokenizer`` is not the teacher's tokenizer."""
        ...


TEACHERS: Registry[Any] = Registry("teacher kind")


def tokenizer_mismatch(student: Any, teacher: Any) -> str | None:
    """Why two Hugging Face tokenizers would map text to different ids, or None when they agree.

    Token ids are sent to the teacher as-is (§5.1), so vocabularies and special tokens must be
    identical, not merely similar.
    """
    vocab_s, vocab_t = student.get_vocab(), teacher.get_vocab()
    if vocab_s != vocab_t:
        only_s = sorted(set(vocab_s) - set(vocab_t))[:5]
        only_t = sorted(set(vocab_t) - set(vocab_s))[:5]
        moved = sorted(k for k in set(vocab_s) & set(vocab_t) if vocab_s[k] != vocab_t[k])[:5]
        return (
            f"vocabularies differ (student {len(vocab_s)} tokens, teacher {len(vocab_t)}); "
            f"only in student: {only_s}; only in teacher: {only_t}; different ids: {moved}"
        )
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        a, b = getattr(student, attr, None), getattr(teacher, attr, None)
        if a != b:
            return f"{attr} differs: student {a}, teacher {b}"
    return None
