"""The multiple-choice verifier for SciKnowEval L3 (ALGORITHMS.md §9.2; lasgroup/SDPO ``feedback/mcq.py``).

pred = the text after the last ``<answer>`` up to the next ``</answer>`` (or the end), whitespace-stripped;
with no ``<answer>`` tag at all, pred is the whole response, stripped (as the reference: a bare ``B`` counts).
Reward = 1 iff pred equals the gold option letter exactly (case-sensitive). Feedback is always empty: the
SDPO self-teacher gets no environment feedback on these tasks.

Example::

    verify = MultipleChoiceVerifier()
    verify("<reasoning>...</reasoning>\\n<answer>\\nB\\n</answer>", "B").correct   # True
    verify("<answer>b</answer>", "B").correct                                       # False
"""

from __future__ import annotations

from dataclasses import dataclass

from opdkit.rewards.base import VERIFIERS, Verdict
from opdkit.rewards.extract import last_tag


@dataclass(frozen=True, kw_only=True)
class MultipleChoiceVerifier:
    """Exact option-letter match inside the last ``<answer>`` tag; registered as ``"mcq"``. No options."""

    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        tagged = last_tag(completion, "answer")
        pred = completion.strip() if tagged is None else tagged
        correct = pred == ground_truth.strip()
        return Verdict(score=1.0 if correct else 0.0, correct=correct, pred=pred, feedback="")


VERIFIERS.add("mcq", MultipleChoiceVerifier)
