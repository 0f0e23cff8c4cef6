"""Countdown: reach a target with given numbers, each used exactly once, with + - * / and parentheses.

"Make 64 from 3, 5, 8 (each once, + - * /)." -> "(3+5)*8". Difficulty = how many numbers (each 1..9). The
problem is built backwards from a random expression tree, so a solution always exists; its canonical answer is
that expression, and any other expression that uses the same numbers and evaluates to the target is right too
(the verifier evaluates it). Intermediate values stay non-negative integers; the target is 1..999.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from opdkit.tasks.base import TASKS, Problem, distinct_near_misses, with_options

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_LEAF = 3


@dataclass(frozen=True)
class _Expr:
    text: str
    value: int
    precedence: int


def _wrap(child: _Expr, op: str, right: bool) -> str:
    """Parenthesise a child only where precedence (or a non-associative right operand) needs it."""
    tight = child.precedence < _PRECEDENCE[op] or (
        right and child.precedence == _PRECEDENCE[op] and op in "-/"
    )
    return f"({child.text})" if tight else child.text


def _combine(a: _Expr, b: _Expr, op: str) -> _Expr | None:
    """a op b, or None when it would leave the non-negative integers."""
    if op == "+":
        value = a.value + b.value
    elif op == "-":
        value = a.value - b.value
    elif op == "*":
        value = a.value * b.value
    else:
        if b.value == 0 or a.value % b.value:
            return None
        value = a.value // b.value
    if value < 0:
        return None
    return _Expr(f"{_wrap(a, op, False)}{op}{_wrap(b, op, True)}", value, _PRECEDENCE[op])


def random_expression(numbers: list[int], rng: random.Random) -> _Expr:
    """Join the numbers (each once) into a random expression tree by repeatedly combining two items."""
    items = [_Expr(str(n), n, _LEAF) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        ops = rng.sample("+-*/", 4)
        combined = next((e for e in (_combine(items[i], items[j], op) for op in ops) if e is not None), None)
        if combined is None:  # "+" never fails, so this cannot happen; kept as a guard
            raise RuntimeError("countdown: no operator applies")
        items = [it for k, it in enumerate(items) if k not in (i, j)] + [combined]
    return items[0]


def _other_expression(numbers: list[int], target: int, rng: random.Random) -> str:
    """An expression over the same numbers with a different value (a near miss)."""
    for _ in range(1000):
        expr = random_expression(rng.sample(numbers, len(numbers)), rng)
        if expr.value != target:
            return expr.text
    raise RuntimeError(f"countdown: every expression over {numbers} equals {target}")


class Countdown:
    name = "countdown"
    default_difficulty = 3

    def problem(self, rng: random.Random, difficulty: int) -> Problem:
        if not 2 <= difficulty <= 6:
            raise ValueError(f"countdown: difficulty (how many numbers) must be in 2..6, got {difficulty}")
        while True:
            numbers = [rng.randint(1, 9) for _ in range(difficulty)]
            expr = random_expression(numbers, rng)
            if 1 <= expr.value <= 999:
                break
        shown = ", ".join(str(n) for n in sorted(numbers))
        question = f"Make {expr.value} from {shown} (each once, + - * /)."
        distractors = distinct_near_misses(
            expr.text, rng, lambda r: _other_expression(numbers, expr.value, r)
        )
        return with_options(self.name, difficulty, question, expr.text, distractors, rng)

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        numbers = [int(ch) for ch in problem.answer if ch.isdigit()]
        target = int(problem.question.split()[1])
        return _other_expression(numbers, target, rng)


TASKS.add("countdown", Countdown())
