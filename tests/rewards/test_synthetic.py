import json

import pytest

import opdkit.rewards.synthetic  # noqa: F401  (registers the synthetic verifiers)
from opdkit.rewards.base import VERIFIERS
from opdkit.rewards.synthetic import evaluate_expression
from opdkit.tasks import tool_gold


def v(name, **options):
    return VERIFIERS.get(name)(**options)


def test_addition_feedback_names_wrong_digits_without_the_answer():
    out = v("addition/boxed")(r"so \boxed{1234}", "1244")
    assert (out.score, out.correct, out.pred) == (0.0, False, "1234")
    # 1234 vs 1244: only the third digit from the left differs
    assert out.feedback == "Your answer 1234 is wrong; digit 3 (counting from the left) is wrong."
    assert "1244" not in out.feedback
    out = v("addition/boxed")(r"\boxed{9235}", "1244")  # digits 1, 3 and 4 differ (9/1, 3/4, 5/4)
    assert "digits 1, 3 and 4 (counting from the left) are wrong" in out.feedback
    assert "3 digits, the answer has 4" in v("addition/boxed")(r"\boxed{124}", "1244").feedback
    assert "not a whole number" in v("addition/boxed")(r"\boxed{12x4}", "1244").feedback


def test_feedback_options_brief_and_reveal():
    assert (
        v("addition/boxed", detailed=False)(r"\boxed{1234}", "1244").feedback == "Your answer 1234 is wrong."
    )
    assert v("addition/boxed", reveal_answer=True)(r"\boxed{1234}", "1244").feedback.endswith(
        "A correct answer is 1244."
    )


def test_correct_answers_have_empty_feedback_and_a_vote():
    out = v("addition/boxed")(r"\boxed{1244}", "1244")
    assert (out.score, out.correct, out.pred, out.feedback) == (1.0, True, "1244", "")


def test_missing_answer_format_and_truncation_messages():
    out = v("addition/boxed")("1244", "1244")
    assert out.pred is None and not out.correct and "\\boxed{}" in out.feedback
    out = v("addition/boxed")("12", "1244", truncated=True)
    assert "cut off" in out.feedback
    assert "<answer>X</answer>" in v("addition/mcq")("B", "B").feedback
    assert "Action: submit" in v("addition/tool")("1244", tool_gold("1244")).feedback


def test_sorting_feedback():
    check = v("sorting/boxed")
    assert check(r"\boxed{2, 5, 17}", "2, 5, 17").correct
    assert check(r"\boxed{[2,5,17]}", "2, 5, 17").correct  # separators and brackets are normalised
    assert "positions 1 and 2 are out of order" in check(r"\boxed{5, 2, 17}", "2, 5, 17").feedback
    out = check(r"\boxed{2, 6, 17}", "2, 5, 17")
    assert "6 is not in the list" in out.feedback and "1 of the given numbers is missing" in out.feedback
    assert "not a list of numbers" in check(r"\boxed{two}", "2, 5, 17").feedback


def test_countdown_accepts_any_right_expression_and_explains_wrong_ones():
    check = v("countdown/boxed")
    gold = "(3+5)*8"  # numbers 3, 5, 8; target 64
    for right in [r"\boxed{(3+5)*8}", r"\boxed{8*(5+3)}", r"\boxed{8 * (3 + 5) = 64}"]:
        out = check(right, gold)
        assert out.correct and out.pred == gold  # every right expression is one vote for maj@k
    assert check(r"\boxed{8*5+3}", gold).feedback == "Your expression 8*5+3 equals 43, not 64."
    assert "must use each of 3, 5, 8 exactly once" in check(r"\boxed{8*8}", gold).feedback
    assert "not a valid expression" in check(r"\boxed{8*(5+3}", gold).feedback
    assert "division by zero" in check(r"\boxed{8/(5-5)+3}", gold).feedback


def test_expression_evaluator_is_exact_and_strict():
    value, numbers = evaluate_expression("7/2*2")
    assert value == 7 and numbers == [7, 2, 2]  # exact fractions: 7/2*2 = 7, not 6
    for bad in ["", "2**3", "-2+3", "2+", "(2", "1e3", "__import__('os')"]:
        with pytest.raises(ValueError):
            evaluate_expression(bad)


def test_mcq_is_an_exact_letter_match():
    check = v("sorting/mcq")
    assert check("<answer> B </answer>", "B").correct
    out = check("<answer>b</answer>", "B")  # case-sensitive, docs/algorithms.md §9.2
    assert not out.correct and out.feedback == "Your answer b is wrong."


def test_tool_style_reads_the_toolalpaca_gold_and_the_submit_call():
    check = v("addition/tool")
    gold = tool_gold("579")
    assert json.loads(gold) == [{"Action": "submit", "Action_Input": '{"answer": "579"}'}]
    assert check('Action: submit\nAction Input: {"answer": "579"}', gold).correct
    out = check('Action: submit\nAction Input: {"answer": "578"}', gold)
    assert not out.correct and "digit 3" in out.feedback
    assert not check('Action: search\nAction Input: {"answer": "579"}', gold).correct
    with pytest.raises(ValueError, match="JSON list of submit calls"):
        check("x", "579")


def test_every_task_style_pair_is_registered():
    names = set(VERIFIERS.names())
    assert {
        f"{t}/{s}" for t in ("addition", "countdown", "sorting") for s in ("boxed", "mcq", "tool")
    } <= names
