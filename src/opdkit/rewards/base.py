"""The verdict type every verifier returns, the verifier protocol and the one verifier registry.

A verifier is a callable ``(completion, ground_truth, *, truncated=False) -> Verdict``. ``ground_truth`` is a
string in the verifier's own format (a LaTeX answer, an option letter, a JSON list of tool calls, ...).
Verifiers are registered by name in ``VERIFIERS``; rows of a dataset name their verifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from opdkit.core.registry import Registry


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one completion.

    score: the reward (1.0 / 0.0 for every verifier of the papers).
    correct: whether the completion counts as a success.
    pred: the extracted answer, used for majority voting (maj@k); None when nothing could be extracted.
    feedback: natural-language feedback for a self-teacher (ALGORITHMS.md §4.3); "" when there is none.
    """

    score: float
    correct: bool
    pred: str | None
    feedback: str = ""


class Verifier(Protocol):
    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict: ...


VERIFIERS: Registry[Verifier] = Registry("verifier")
