"""An unreliable external teacher: confidently wrong on a known subset of the questions.

A toy setting for SCOPE's claim that reward routing and teacher-perplexity weighting protect the student
from bad guidance. The wrapper scores with a real teacher (a ``LocalTeacher``), but on a fixed subset of the
questions it shows the teacher a *corrupted* question: the last digit of the prompt is shifted by one
(d -> (d + 1) mod 10; for addition "What is 37+45?" becomes "What is 37+46?"). The teacher is as sure of
itself as ever, about the wrong sum, so on those questions its log-probs favour a wrong answer and
disfavour the right one.

The subset is a property of the question text: a question is corrupted when the first 8 hex digits of
sha256(seed, prompt text) / 16^8 < ``wrong_fraction``, so every run, seed and method sees the same subset,
and ``is_corrupted`` tells which. Rows of corrupted questions are flagged in ``TeacherScores.row_flags_N``
(diagnostics only: SCOPE's plot marks them), and ``teacher/corrupted_fraction`` counts them per call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from opdkit.teachers.base import TEACHERS, TeacherScores
from opdkit.teachers.local import LocalTeacher

_LAST_DIGIT = re.compile(r"(\d)(\D*)$")


def is_corrupted(prompt_text: str, wrong_fraction: float, seed: int = 0) -> bool:
    """Whether the unreliable teacher is wrong on this prompt (module docstring)."""
    digest = hashlib.sha256(f"{seed}\x00{prompt_text}".encode()).hexdigest()
    return int(digest[:8], 16) / 16**8 < wrong_fraction


def corrupt_question(prompt_text: str) -> str:
    """The prompt with its last digit shifted by one (unchanged when it has no digit)."""
    return _LAST_DIGIT.sub(lambda m: f"{(int(m[1]) + 1) % 10}{m[2]}", prompt_text)


class UnreliableTeacher:
    """``inner`` everywhere except on the corrupted questions, where it sees ``corrupt_question``."""

    def __init__(self, inner: Any, tokenizer: Any, *, wrong_fraction: float, seed: int = 0):
        if not 0.0 <= wrong_fraction <= 1.0:
            raise ValueError(f"teacher.wrong_fraction must be in [0, 1], got {wrong_fraction}")
        self.inner, self.tokenizer = inner, tokenizer
        self.wrong_fraction, self.seed = wrong_fraction, seed

    def check_tokenizer(self, tokenizer: Any) -> None:
        self.inner.check_tokenizer(tokenizer)

    def _shown(self, prompt_ids: Sequence[Sequence[int]]) -> tuple[list[list[int]], torch.Tensor]:
        """The prompts the teacher is shown, and which were corrupted (N,) bool."""
        shown, flags = [], []
        for ids in prompt_ids:
            text = self.tokenizer.decode(list(ids))
            bad = is_corrupted(text, self.wrong_fraction, self.seed)
            shown.append(
                self.tokenizer.encode(corrupt_question(text), add_special_tokens=False) if bad else list(ids)
            )
            flags.append(bad)
        return shown, torch.tensor(flags, dtype=torch.bool)

    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        top_k: int = 0,
        pad_to: int | None = None,
    ) -> TeacherScores:
        shown, flags_N = self._shown(prompt_ids)
        scores = self.inner.score(shown, response_ids, top_k=top_k, pad_to=pad_to)
        stats = {
            **scores.stats,
            "teacher/corrupted_fraction": float(flags_N.float().mean()) if len(flags_N) else 0.0,
        }
        return replace(scores, stats=stats, row_flags_N=flags_N)


@TEACHERS.register("unreliable")
def make_unreliable_teacher(
    *,
    path: str,
    device: str = "cpu",
    temperature: float = 1.0,
    dtype: str = "float32",
    wrong_fraction: float = 0.5,
    seed: int = 0,
) -> UnreliableTeacher:
    """Factory for ``teacher.kind=unreliable``: a local teacher (``path``, weights in the run's compute
    ``dtype``) wrong on ``wrong_fraction``."""
    if not path:
        raise ValueError("teacher.kind=unreliable needs teacher.path (a Hugging Face model directory)")
    inner = LocalTeacher.from_path(path, device=device, temperature=temperature, dtype=dtype)
    return UnreliableTeacher(inner, inner.tokenizer, wrong_fraction=wrong_fraction, seed=seed)
