"""The math verifier end to end: extraction, fast path, math-verify in worker processes, feedback (§9.1)."""

import pytest

from opdkit.core.registry import UnknownNameError
from opdkit.rewards import MathVerifier, make_verifier, verify_batch
from opdkit.rewards.math_verifier import (
    FORMAT_FEEDBACK,
    TRUNCATION_FEEDBACK,
    WRONG_ANSWER_FEEDBACK,
    gold_answer,
)

verify = MathVerifier(timeout_s=5.0, workers=2)


def said(answer: str) -> str:
    """A completion as a model writes it, ending with the boxed answer."""
    return f"Let me work through it step by step. ... so the answer is \\boxed{{{answer}}}."


@pytest.mark.parametrize(
    ("completion", "gold", "correct"),
    [
        # nested braces, and math-verify deciding \frac{1}{\sqrt{2}} = \frac{\sqrt{2}}{2}
        (said(r"\frac{1}{\sqrt{2}}"), r"\frac{\sqrt{2}}{2}", True),
        (said(r"\frac{\pi}{2}"), r"\pi/2", True),
        (said("(x+1)^2"), "x^2+2x+1", True),
        (said("x^2"), "x^3", False),
        # several boxes: the last one counts
        (r"First \boxed{10}, but on reflection \boxed{12}.", "12", True),
        (r"First \boxed{10}, but on reflection \boxed{12}.", "10", False),
        # an unclosed last box falls back to the previous complete one
        (r"\boxed{7} and then \boxed{8", "7", True),
        # \frac vs decimals vs percentages
        (said("0.5"), r"\frac{1}{2}", True),
        (said(r"\dfrac{1}{2}"), "0.5", True),
        (said("4.6667"), r"\frac{14}{3}", False),  # only exact numbers are equal
        (said(r"50\%"), "50", True),  # Hendrycks drops the percent sign
        (said("0.5"), r"50\%", False),  # ... so 50% is 50, not 0.5
        # \text{} options
        (said(r"\text{(C)}"), "C", True),
        (said("C"), r"\text{(C)}", True),
        (said("(B)"), r"\text{(C)}", False),
        (said(r"\text{Evelyn}"), r"\text{Evelyn}", True),
        # benchmark gold quirks: AMC floats, AIME leading zeros, GSM8K thousands separators
        (said("27"), "27.0", True),
        (said("25"), "025", True),
        (said("2,125"), "2125", True),
        (said("2125"), "2,125", True),
        (said("2124"), "2,125", False),
        # a boxed gold and $-wrapped gold are unwrapped
        (said("5"), r"\boxed{5}", True),
        (said("5"), "$5$", True),
        # tuples and intervals
        (said(r"\left(3, \frac{\pi}{2}\right)"), r"\left( 3, \frac{\pi}{2} \right)", True),
        (said("(3, 1)"), r"\left( 3, \frac{\pi}{2} \right)", False),
    ],
)
def test_math_cases(completion, gold, correct):
    verdict = verify(completion, gold)
    assert verdict.correct is correct
    assert verdict.score == (1.0 if correct else 0.0)


def test_missing_or_empty_box_gives_the_format_feedback():
    for completion in ("The answer is 7.", r"So \boxed{}.", r"\boxed{7"):
        verdict = verify(completion, "7")
        assert (verdict.correct, verdict.pred, verdict.feedback) == (False, None, FORMAT_FEEDBACK)


def test_truncation_feedback_only_for_wrong_truncated_responses():
    assert verify("I was still thinking when", "7", truncated=True).feedback == TRUNCATION_FEEDBACK
    assert verify(said("6"), "7", truncated=True).feedback == TRUNCATION_FEEDBACK
    assert verify(said("7"), "7", truncated=True).feedback == ""  # correct answers get no feedback


def test_feedback_modes():
    wrong = said("6")
    assert (
        MathVerifier().__call__(wrong, "7").feedback == ""
    )  # default "format": a parsed wrong answer gets none
    assert MathVerifier(feedback="safe")(wrong, "7").feedback == WRONG_ANSWER_FEEDBACK
    assert (
        MathVerifier(feedback="oracle")(wrong, "7").feedback
        == "Your answer is incorrect. The correct answer is 7."
    )
    assert MathVerifier(feedback="none")("no box", "7").feedback == ""
    assert MathVerifier(feedback="oracle")(said("7"), "7").feedback == ""


def test_pred_is_a_canonical_voting_key():
    assert verify(said("0.50"), "1").pred == "1/2"
    assert verify(said(r"\frac{1}{2}"), "1").pred == "1/2"
    assert verify(said(r"\text{(C)}"), "C").pred == "C"


def test_tail_chars_looks_only_at_the_end():
    completion = r"Early guess \boxed{5}." + " and a long explanation" * 10
    assert MathVerifier()(completion, "5").correct
    sdpo = MathVerifier(tail_chars=100)  # lasgroup/SDPO reads only the last 100 characters
    assert sdpo(completion, "5").feedback == FORMAT_FEEDBACK


def test_abs_tol_for_toleranced_numeric_answers():
    # OlympiadBench's one row with error "1e-1": |4.25 - 4.2| = 0.05 <= 0.1.
    assert MathVerifier(abs_tol=0.1)(said("4.25"), "4.2").correct
    assert not MathVerifier()(said("4.25"), "4.2").correct
    assert not MathVerifier(abs_tol=0.1)(said("4.35"), "4.2").correct


def test_huge_answers_are_wrong_without_math_verify():
    huge = "+".join(["1"] * 6000)  # 11,999 characters: longer than MAX_ANSWER_CHARS, never sent to a worker
    assert verify.quick_check("6000", huge) is False
    assert not verify(said(huge), "6000").correct
    assert verify(said(huge), huge).correct  # string-equal answers are still right


def test_gold_answer_unwraps():
    assert gold_answer(r" \boxed{\frac{1}{2}} ") == r"\frac{1}{2}"
    assert gold_answer("$42$") == "42"


def test_verify_batch_matches_single_calls_in_order():
    completions = [said(r"\frac{\pi}{2}"), "no box", said("3"), said("(x+1)^2"), said("x^2")]
    golds = [r"\pi/2", "1", "3", "x^2+2x+1", "x^3"]
    batch = verify_batch(verify, completions, golds, truncated=[False, True, False, False, False])
    single = [
        verify(c, g, truncated=t) for c, g, t in zip(completions, golds, [False, True, False, False, False])
    ]
    assert batch == single
    assert [v.correct for v in batch] == [True, False, True, True, False]
    assert batch[1].feedback == TRUNCATION_FEEDBACK


def test_registry_and_option_errors():
    assert isinstance(make_verifier("math", feedback="oracle", timeout_s=2), MathVerifier)
    with pytest.raises(UnknownNameError, match=r"valid verifiers: .*math.*mcq.*toolcall"):
        make_verifier("maths")
    with pytest.raises(TypeError, match=r"valid options: feedback, timeout_s, workers, tail_chars, abs_tol"):
        make_verifier("math", timeout=3)
    with pytest.raises(ValueError, match="feedback must be one of none, format, safe, oracle"):
        MathVerifier(feedback="reveal")
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifier(timeout_s=0)
