"""The multiple-choice verifier for SciKnowEval L3 (§9.2; lasgroup/SDPO ``feedback/mcq.py``).

pred = the text after the last ``<answer>`` (the whole response when there is none) up to the next
``</answer>`` (or the end), whitespace-stripped, exactly as the reference's split on the two tags: a bare
``B`` counts, and so does ``B</answer>`` with the opening tag missing.
Reward = 1 iff pred equals the gold option letter exactly (case-sensitive). Feedback is always empty: the
SDPO self-teacher gets no environment feedback on these tasks.

Example::

    verify = MultipleChoiceVerifier()
    verify("<reasoning>...</reasoning>\\n<answer>\\nB\\n</answer>", "B").correct   # True
    verify("<answer>b</answer>", "B").correct                                       # False
    verify("... so B</answer>", "B").correct                                        # False: pred "... so B"
    verify("B\n</answer>", "B").correct                                            # True
"""

from __future__ import annotations

from dataclasses import dataclass

from opdkit.rewards.base import VERIFIERS, Verdict


def answer_text(completion: str) -> str:
    """The text after the last ``<answer>`` (or from the start) up to the first ``</answer>`` after it (or the
    end), stripped: the reference's ``split("<answer>")[-1].split("</answer>")[0].strip()``."""
    start = completion.rfind("<answer>")
    rest = completion if start < 0 else completion[start + len("<answer>") :]
    end = rest.find("</answer>")
    return (rest if end < 0 else rest[:end]).strip()


@dataclass(frozen=True, kw_only=True)
class MultipleChoiceVerifier:
    """Exact option-letter match inside the last ``<answer>`` tag; registered as ``"mcq"``. No options."""

    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        pred = answer_text(completion)
        correct = pred == ground_truth.strip()
        return Verdict(score=1.0 if correct else 0.0, correct=correct, pred=pred, feedback="")


VERIFIERS.add("mcq", MultipleChoiceVerifier)
