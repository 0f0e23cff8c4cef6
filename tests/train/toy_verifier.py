"""A verifier that gives a random character-level model a mixed pass rate: success when the completion starts
with a character of the ground truth. Registered as ``test/first_char`` (imported by conftest and by the
subprocess of the kill/resume test)."""

from __future__ import annotations

from opdkit.rewards.base import VERIFIERS, Verdict

# What a random character-level model emits first about half the time: letters a-m and digits.
HALF_OF_THE_VOCABULARY = "abcdefghijklm0123456789"


def first_char_verifier():
    def verify(completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        ok = bool(completion) and completion[0] in ground_truth
        feedback = "" if ok else "Start your answer with a lower-case letter from a to m or a digit."
        return Verdict(score=float(ok), correct=ok, pred=completion[:1] or None, feedback=feedback)

    return verify


def register() -> None:
    if "test/first_char" not in VERIFIERS:
        VERIFIERS.add("test/first_char", first_char_verifier)
