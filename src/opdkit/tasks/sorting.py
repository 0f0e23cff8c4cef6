"""Sorting: "Sort ascending: 17, 5, 33, 2." -> "2, 5, 17, 33".

Difficulty = list length; the numbers are distinct, drawn from 0..99. Measured: 6 numbers reach ~30 % sampled
accuracy after ~250 supervised steps. Near misses swap two neighbours or nudge one number.
"""

from __future__ import annotations

import random

from opdkit.tasks.base import TASKS, Problem, distinct_near_misses, with_options

MAX_VALUE = 99


def join_numbers(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _near_miss(sorted_values: list[int], rng: random.Random) -> str:
    values = list(sorted_values)
    if len(values) > 1 and rng.random() < 0.5:
        i = rng.randrange(len(values) - 1)
        values[i], values[i + 1] = values[i + 1], values[i]
    else:
        i = rng.randrange(len(values))
        values[i] = min(MAX_VALUE, max(0, values[i] + rng.choice([-3, -2, -1, 1, 2, 3])))
    return join_numbers(values)


class Sorting:
    name = "sorting"
    default_difficulty = 5

    def problem(self, rng: random.Random, difficulty: int) -> Problem:
        if not 2 <= difficulty <= MAX_VALUE + 1:
            raise ValueError(
                f"sorting: difficulty (list length) must be in 2..{MAX_VALUE + 1}, got {difficulty}"
            )
        values = rng.sample(range(MAX_VALUE + 1), difficulty)
        answer = join_numbers(sorted(values))
        distractors = distinct_near_misses(answer, rng, lambda r: _near_miss(sorted(values), r))
        question = f"Sort ascending: {join_numbers(values)}."
        return with_options(self.name, difficulty, question, answer, distractors, rng)

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        values = sorted(int(v) for v in problem.answer.split(", "))
        return distinct_near_misses(problem.answer, rng, lambda r: _near_miss(values, r), count=1)[0]


TASKS.add("sorting", Sorting())
