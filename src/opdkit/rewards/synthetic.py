"""Verifiers for the synthetic tasks (``opdkit.tasks``): a binary score, the extracted answer and feedback.

Registered in ``VERIFIERS`` as ``"<task>/<style>"`` for task in addition, countdown, sorting and style in
boxed, mcq, tool. Each entry is a factory; call it with keyword options to get the verifier::

    verify = VERIFIERS.get("addition/boxed")()                  # detailed=True, reveal_answer=False
    verify(r"\\boxed{1234}", "1244")
    # Verdict(score=0.0, correct=False, pred='1234',
    #         feedback='Your answer 1234 is wrong; digit 3 (counting from the left) is wrong.')

The gold string is all a verifier sees (``tasks`` and ``rewards`` never import each other): the sum, the
sorted list, one valid countdown expression (the numbers and the target are read from it), an option letter,
or the ToolAlpaca-style JSON list of calls (docs/algorithms.md §9.3).

Feedback is written for a small self-teacher (§4.3; measured: a per-digit right/wrong mask in
context lifted a tiny model from 28 % to 61 %). It repeats the wrong answer and says *where* it is wrong
without stating the right answer; ``detailed=False`` only says it is wrong; ``reveal_answer=True`` appends the
answer.
A missing answer gets a format message, or a truncation message when the response hit the length limit.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from opdkit.rewards.base import VERIFIERS, Verdict
from opdkit.rewards.extract import last_boxed, last_tag, parse_tool_calls

TOOL_NAME = "submit"
_MAX_EXPRESSION_CHARS = 200  # bounds the countdown parser's work on pathological completions


@dataclass(frozen=True)
class _Check:
    """A task's judgement of an extracted answer: correct?, the vote key for maj@k, where it is wrong."""

    correct: bool
    vote: str
    detail: str  # the detailed feedback sentence ("" when correct)


def _positions(indices: list[int]) -> str:
    """[2, 4] -> "2 and 4"; [1, 2, 5] -> "1, 2 and 5" (1-based positions)."""
    words = [str(i + 1) for i in indices]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def check_addition(pred: str, gold: str) -> _Check:
    """Exact integer match; feedback names the wrong digits, counted from the left."""
    answer = pred.strip().replace(",", "")
    if answer == gold:
        return _Check(True, gold, "")
    if not answer.isdigit():
        return _Check(False, answer, f"Your answer {pred.strip()!r} is not a whole number.")
    if len(answer) != len(gold):
        return _Check(
            False,
            answer,
            f"Your answer {answer} is wrong: it has {len(answer)} digits, the answer has {len(gold)}.",
        )
    wrong = [i for i, (a, b) in enumerate(zip(answer, gold)) if a != b]
    noun = "digit" if len(wrong) == 1 else "digits"
    verb = "is" if len(wrong) == 1 else "are"
    return _Check(
        False,
        answer,
        f"Your answer {answer} is wrong; {noun} {_positions(wrong)} (counting from the left) {verb} wrong.",
    )


_MAX_DIGITS = 1000  # int() refuses strings over 4,300 digits; no task answer is near this


def _int_list(text: str) -> list[int] | None:
    parts = [p for p in re.split(r"[\s,]+", text.strip().strip("[]()")) if p]
    # isdecimal, not isdigit: "²" is a digit that int() refuses
    ok = parts and all(p.isdecimal() and len(p) <= _MAX_DIGITS for p in parts)
    return [int(p) for p in parts] if ok else None


def check_sorting(pred: str, gold: str) -> _Check:
    """Exact list match; feedback names numbers that do not belong, or the positions out of order."""
    values, target = _int_list(pred), _int_list(gold) or []
    if values is None:
        return _Check(False, pred.strip(), f"Your answer {pred.strip()!r} is not a list of numbers.")
    shown = ", ".join(map(str, values))
    if values == target:
        return _Check(True, shown, "")
    extra = sorted((Counter(values) - Counter(target)).elements())
    missing = sum((Counter(target) - Counter(values)).values())
    if extra or missing:
        parts = (
            [f"{', '.join(map(str, extra))} {'is' if len(extra) == 1 else 'are'} not in the list"]
            if extra
            else []
        )
        parts += (
            [f"{missing} of the given numbers {'is' if missing == 1 else 'are'} missing"] if missing else []
        )
        return _Check(False, shown, f"Your answer {shown} is wrong: {'; '.join(parts)}.")
    wrong = [i for i, (a, b) in enumerate(zip(values, target)) if a != b]
    return _Check(
        False, shown, f"Your answer {shown} is wrong; positions {_positions(wrong)} are out of order."
    )


class _ExpressionError(ValueError):
    pass


def evaluate_expression(text: str) -> tuple[Fraction, list[int]]:
    """Value and numbers (in order) of an arithmetic expression over non-negative integers, + - * / and
    parentheses, evaluated exactly with fractions. Raises ``ValueError`` on anything else (or division by 0).
    """
    tokens = re.findall(r"\d+|[-+*/()]|\S", text)
    if not tokens or len(text) > _MAX_EXPRESSION_CHARS:
        raise _ExpressionError("empty or too long")
    pos, numbers = 0, []

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> Fraction:
        tok = take() if peek() is not None else None
        if tok is not None and tok.isdigit():
            numbers.append(int(tok))
            return Fraction(int(tok))
        if tok == "(":
            value = expr()
            if peek() != ")":
                raise _ExpressionError("unbalanced parenthesis")
            take()
            return value
        raise _ExpressionError(f"unexpected {tok!r}")

    def term() -> Fraction:
        value = atom()
        while peek() in ("*", "/"):
            op, rhs = take(), atom()
            if op == "/" and rhs == 0:
                raise _ExpressionError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def expr() -> Fraction:
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    value = expr()
    if pos != len(tokens):
        raise _ExpressionError(f"unexpected {tokens[pos]!r}")
    return value, numbers


def check_countdown(pred: str, gold: str) -> _Check:
    """Right iff the expression uses exactly the gold expression's numbers and reaches its value."""
    target, given = evaluate_expression(gold)
    expression = pred.split("=")[0].strip().replace(" ", "")  # "(3+5)*8=64" states the same expression
    try:
        value, used = evaluate_expression(expression)
    except ValueError as err:
        return _Check(False, expression, f"Your answer {pred.strip()!r} is not a valid expression ({err}).")
    if Counter(used) != Counter(given):
        listed = ", ".join(map(str, sorted(given)))
        return _Check(
            False, expression, f"Your expression {expression} must use each of {listed} exactly once."
        )
    if value != target:
        return _Check(False, expression, f"Your expression {expression} equals {value}, not {target}.")
    return _Check(True, gold, "")  # every right expression votes as one answer for maj@k


CHECKS: dict[str, Callable[[str, str], _Check]] = {
    "addition": check_addition,
    "addition_mix": check_addition,  # addition at mixed digit counts (tasks.addition.AdditionMix)
    "countdown": check_countdown,
    "sorting": check_sorting,
}


def _boxed(completion: str) -> str | None:
    return last_boxed(completion)


def _submitted(completion: str) -> str | None:
    calls = parse_tool_calls(completion)
    answer = calls.inputs.get("answer")
    return str(answer) if TOOL_NAME in calls.actions and answer is not None else None


def _tool_gold_answer(gold: str) -> str:
    """The submitted answer inside the ToolAlpaca-style gold list (docs/algorithms.md §9.3)."""
    try:
        return str(json.loads(json.loads(gold)[0]["Action_Input"])["answer"])
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"tool-style gold is not a JSON list of submit calls: {gold!r}") from err


_FORMAT_HINT = {
    "boxed": "put the final answer in \\boxed{}",
    "mcq": "reply with <answer>X</answer> holding one option letter",
    "tool": 'reply with Action: submit and Action Input: {"answer": ...}',
}


def check_letter(pred: str, gold: str) -> _Check:
    """§9.2: exact, case-sensitive letter match (a letter cannot say where it went wrong)."""
    letter = pred.strip()
    return _Check(letter == gold, letter, "" if letter == gold else f"Your answer {letter} is wrong.")


@dataclass(frozen=True)
class _StyleRule:
    """How a style extracts the answer from a completion and from the gold; ``check`` overrides the task's."""

    extract: Callable[[str], str | None]
    gold_answer: Callable[[str], str]
    check: Callable[[str, str], _Check] | None = None


STYLE_RULES: dict[str, _StyleRule] = {
    "boxed": _StyleRule(_boxed, str.strip),
    "mcq": _StyleRule(lambda text: last_tag(text, "answer"), str.strip, check_letter),
    "tool": _StyleRule(_submitted, _tool_gold_answer),
}


@dataclass(frozen=True)
class SyntheticVerifier:
    """``(completion, ground_truth, *, truncated=False) -> Verdict`` for one task and style.

    detailed: say where the answer is wrong (digits, positions, value); else only that it is wrong.
    reveal_answer: append the right answer to the feedback (off by default: it would make the self-teacher's
      task trivial, which the papers' math verifiers also avoid, docs/algorithms.md §9.1).
    """

    task: str
    style: str
    detailed: bool = True
    reveal_answer: bool = False

    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        rule = STYLE_RULES[self.style]
        gold = rule.gold_answer(ground_truth)
        pred = rule.extract(completion)
        if pred is None:
            if truncated:
                return Verdict(
                    0.0, False, None, "Your response was cut off at the length limit before an answer."
                )
            return Verdict(0.0, False, None, f"No answer found: {_FORMAT_HINT[self.style]}.")
        check = (rule.check or CHECKS[self.task])(pred, gold)
        if check.correct:
            return Verdict(1.0, True, check.vote, "")
        feedback = check.detail if self.detailed else f"Your answer {check.vote} is wrong."
        if self.reveal_answer:
            feedback += f" A correct answer is {gold}."
        return Verdict(0.0, False, check.vote, feedback)


def _register() -> None:
    for task in CHECKS:
        for style in STYLE_RULES:

            def factory(*, detailed: bool = True, reveal_answer: bool = False, _t=task, _s=style):
                return SyntheticVerifier(_t, _s, detailed=detailed, reveal_answer=reveal_answer)

            VERIFIERS.add(f"{task}/{style}", factory)


_register()
