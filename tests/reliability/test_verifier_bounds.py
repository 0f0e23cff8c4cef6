"""Model output can never crash or stall a verifier: adversarial completions get a wrong verdict, quickly.

Each case was a fault before: a ValueError (Python refuses int() of strings over 4,300 digits), a
RecursionError, or seconds to minutes of work (quadratic normalisation of nested ``\\text{``, a JSON error
per ``Action Input:`` marker that costs time linear in its offset, a regex that rescans to the end of the
text from every marker). ``pytest.mark.timeout`` is the guard: these run in well under a second now, the
bounds are generous for a loaded CI machine, and before the fix they ran from 9 s to several minutes.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from opdkit.rewards import (
    MathVerifier,
    Verdict,
    VerifierUnavailableError,
    make_verifier,
    safe_verdict,
    verify_batch,
)
from opdkit.rewards.base import UNCHECKABLE_FEEDBACK
from opdkit.rewards.math_verifier import WRONG_ANSWER_FEEDBACK
from opdkit.rewards.normalize import MAX_NORMALIZE_CHARS, normalize_answer

DIGITS_5000 = "7" * 5000  # over Python's 4,300-digit limit for int(str)
NESTED_TEXT = "\\text{" * 20_000 + "x" + "}" * 20_000  # 140,001 characters; 54 s of normalisation before
TOOL_GOLD = json.dumps([{"Action": "search", "Action_Input": json.dumps({"q": "cats"})}])
GOOD_CALL = 'Action: search\nAction Input: {"q": "cats"}'
MARKERS = "Action Input: {" * 50_000  # 750,000 characters, no "}" anywhere


def math_verdict(completion: str, gold: str) -> Verdict:
    # workers=1: any check that reaches math-verify runs in a worker process under timeout_s.
    return MathVerifier(feedback="safe", workers=1, timeout_s=2.0)(completion, gold)


@pytest.mark.timeout(60)
def test_a_5000_digit_fraction_is_a_wrong_answer_not_a_valueerror():
    verdict = math_verdict(f"so \\boxed{{\\frac{{1}}{{{DIGITS_5000}}}}}", "3")
    assert (verdict.correct, verdict.score, verdict.feedback) == (False, 0.0, WRONG_ANSWER_FEEDBACK)


@pytest.mark.timeout(60)
def test_a_5000_digit_number_equal_to_the_gold_is_right_and_a_different_one_wrong():
    assert math_verdict(f"\\boxed{{{DIGITS_5000}}}", DIGITS_5000).correct  # string-equal: no int() needed
    assert not math_verdict(f"\\boxed{{{DIGITS_5000}}}", DIGITS_5000[:-1] + "8").correct


@pytest.mark.timeout(10)
def test_20000_nested_text_wrappers_are_checked_quickly():
    verdict = math_verdict(f"\\boxed{{{NESTED_TEXT}}}", "x")
    # Over MAX_ANSWER_CHARS and not string-equal to the gold: wrong without math-verify.
    assert (verdict.correct, verdict.feedback) == (False, WRONG_ANSWER_FEEDBACK)
    assert normalize_answer(NESTED_TEXT) == NESTED_TEXT  # over MAX_NORMALIZE_CHARS: only whitespace goes


@pytest.mark.timeout(10)
def test_nested_wrappers_under_the_cap_still_unwrap_to_the_answer():
    depth = (MAX_NORMALIZE_CHARS - 1) // len("\\text{}")  # 1,428 levels: 9,997 characters
    nested = "\\text{" * depth + "x" + "}" * depth
    assert len(nested) <= MAX_NORMALIZE_CHARS
    assert normalize_answer(nested) == "x"  # unwrapped innermost first, as the Hendrycks rule does
    assert normalize_answer("\\textbf{\\text{a{b}}}") == "\\textbf{\\text{a{b}}}"  # a braced group stays
    assert math_verdict(f"\\boxed{{{nested}}}", "x").correct


@pytest.mark.timeout(5)
def test_50000_action_input_markers_cost_no_time():
    verdict = make_verifier("toolcall")(MARKERS + GOOD_CALL, TOOL_GOLD)
    # The parser stops after 100 markers whose JSON fails (MAX_FAILED_INPUTS): the call at the end is unread.
    assert not verdict.correct
    assert verdict.feedback.startswith("Action inputs mismatch: predicted {}, expected {'q': 'cats'}")


@pytest.mark.timeout(5)
def test_compat_regex_mode_is_linear_and_never_recurses():
    verify = make_verifier("toolcall", compat_regex=True)
    verdict = verify(MARKERS, TOOL_GOLD)
    assert verdict.feedback == (
        "Actions mismatch: predicted [], expected ['search']; "
        "Action inputs mismatch: predicted {}, expected {'q': 'cats'}"
    )
    # Deep nesting inside one {...} block was a RecursionError in json.loads.
    deep = 'Action: search\nAction Input: {"q": ' + "[" * 100_000 + "}"
    assert not verify(deep, TOOL_GOLD).correct
    assert verify(MARKERS[:30] + " x } " + GOOD_CALL, TOOL_GOLD).correct  # still the reference's matches


@pytest.mark.timeout(5)
@pytest.mark.parametrize("compat", [False, True])
def test_a_5000_digit_json_integer_is_skipped_not_raised(compat):
    verify = make_verifier("toolcall", compat_regex=compat)
    verdict = verify(f'Action: search\nAction Input: {{"q": {DIGITS_5000}}}', TOOL_GOLD)
    assert not verdict.correct and "predicted {}" in verdict.feedback


@pytest.mark.timeout(5)
@pytest.mark.parametrize("answer", [f"[1, 2, {DIGITS_5000}]", "[1, 2, ²]"])
def test_sorting_answers_int_cannot_read_are_not_a_list_of_numbers(answer):
    # "²" is a digit to str.isdigit() that int() refuses.
    verdict = make_verifier("sorting/boxed")(f"\\boxed{{{answer}}}", "[1, 2, 3]")
    assert not verdict.correct and "is not a list of numbers" in verdict.feedback


ADVERSARIAL = [
    ("math", f"\\boxed{{\\frac{{1}}{{{DIGITS_5000}}}}}", "3"),
    ("math", f"\\boxed{{{NESTED_TEXT}}}", "x"),
    ("math", "\\boxed{9^{9^{9^{9}}}}", "3"),  # math-verify would run for minutes: bounded by timeout_s
    ("toolcall", MARKERS + GOOD_CALL, TOOL_GOLD),
    ("sorting/boxed", "\\boxed{[1, ²]}", "[1, 2]"),
]


@pytest.mark.timeout(120)
def test_every_adversarial_input_is_a_wrong_verdict_from_a_worker_thread():
    def check(case: tuple[str, str, str]) -> Verdict:
        name, completion, gold = case
        options = {"workers": 1, "timeout_s": 1.0, "feedback": "safe"} if name == "math" else {}
        (verdict,) = verify_batch(make_verifier(name, **options), [completion], [gold])
        return verdict

    with ThreadPoolExecutor(max_workers=2) as pool:
        verdicts = list(pool.map(check, ADVERSARIAL))
    assert [v.correct for v in verdicts] == [False] * len(ADVERSARIAL)
    assert all(v.feedback for v in verdicts)  # every one says why


class _Fragile:
    """A verifier that raises on one completion; any other completion is right iff it equals the gold."""

    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        if completion == "boom":
            raise ValueError("cannot read " + completion)
        if ground_truth == "unreadable":
            raise KeyError(ground_truth)
        ok = completion == ground_truth
        return Verdict(float(ok), ok, completion, "" if ok else "wrong")


class _FragileBatch(_Fragile):
    def verify_batch(self, completions, ground_truths, truncated):
        return [self(c, g, truncated=t) for c, g, t in zip(completions, ground_truths, truncated)]


@pytest.mark.parametrize("verifier", [_Fragile(), _FragileBatch()], ids=["per-row", "batch"])
def test_an_exception_on_one_completion_is_a_wrong_verdict_with_feedback(verifier):
    verdicts = verify_batch(verifier, ["a", "boom", "c"], ["a", "a", "c"])
    assert [v.correct for v in verdicts] == [True, False, True]  # the other rows keep their verdicts
    assert verdicts[1] == Verdict(0.0, False, None, UNCHECKABLE_FEEDBACK.format(error="ValueError"))


def test_a_bad_ground_truth_and_an_unusable_verifier_still_raise():
    with pytest.raises(KeyError, match="unreadable"):  # a data error: the empty completion fails too
        safe_verdict(_Fragile(), "boom", "unreadable")
    with pytest.raises(ValueError, match="not JSON"):
        verify_batch(make_verifier("toolcall"), ["Action: a"], ["[{"])

    def unusable(completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        raise VerifierUnavailableError("math-verify is not installed")

    with pytest.raises(VerifierUnavailableError, match="not installed"):
        verify_batch(unusable, ["x"], ["x"])
