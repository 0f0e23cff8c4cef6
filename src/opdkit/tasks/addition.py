"""Multi-digit addition (the default task): "What is 123+456?" -> 579.

Difficulty = digits per operand (operands are uniform over the d-digit numbers, 0..9 for d = 1). Near misses
change one or two digits of the sum, the kind of slip a small model makes; they double as MCQ distractors.
Measured: with 3 digits a 0.5 M-parameter model reaches a 20-50 % sampled pass rate within a minute of CPU
training.
"""

from __future__ import annotations

import dataclasses
import random

from opdkit.tasks.base import TASKS, Problem, distinct_near_misses, with_options


def _change_digits(answer: str, rng: random.Random) -> str:
    """Replace one digit (two, half of the time) by a different one; never creates a leading zero."""
    digits = list(answer)
    count = 1 if len(digits) == 1 or rng.random() < 0.5 else 2
    for pos in rng.sample(range(len(digits)), count):
        low = 1 if pos == 0 and len(digits) > 1 else 0
        choices = [str(d) for d in range(low, 10) if str(d) != digits[pos]]
        digits[pos] = rng.choice(choices)
    return "".join(digits)


class Addition:
    name = "addition"
    default_difficulty = 3

    def problem(self, rng: random.Random, difficulty: int) -> Problem:
        if difficulty < 1:
            raise ValueError(f"addition: difficulty (digits) must be >= 1, got {difficulty}")
        low = 0 if difficulty == 1 else 10 ** (difficulty - 1)
        a, b = rng.randint(low, 10**difficulty - 1), rng.randint(low, 10**difficulty - 1)
        answer = str(a + b)
        distractors = distinct_near_misses(answer, rng, lambda r: _change_digits(answer, r))
        return with_options(self.name, difficulty, f"What is {a}+{b}?", answer, distractors, rng)

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        return distinct_near_misses(
            problem.answer, rng, lambda r: _change_digits(problem.answer, r), count=1
        )[0]


TASKS.add("addition", Addition())


class AdditionMix:
    """Addition at several difficulties at once: each problem's operands have a digit count drawn uniformly
    from 1..difficulty (``Problem.difficulty`` records it), so one model's pass rates spread from ~1 on
    one-digit sums to ~0 on the longest ones — a pool where weighting questions by p(1−p) has something to
    reweight. Checked like ``addition``."""

    name = "addition_mix"
    default_difficulty = 3

    def problem(self, rng: random.Random, difficulty: int) -> Problem:
        if difficulty < 1:
            raise ValueError(f"addition_mix: difficulty (most digits) must be >= 1, got {difficulty}")
        return dataclasses.replace(_ADDITION.problem(rng, rng.randint(1, difficulty)), task=self.name)

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        return _ADDITION.wrong_answer(problem, rng)


_ADDITION = Addition()
TASKS.add("addition_mix", AdditionMix())
