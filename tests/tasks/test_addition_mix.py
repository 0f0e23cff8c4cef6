"""addition_mix: addition at several digit counts at once, checked by the addition verifier."""

from __future__ import annotations

import re
from collections import Counter

from opdkit.rewards import VERIFIERS
from opdkit.tasks import TaskSpec, generate, generate_problems


def test_each_problem_draws_its_digit_count_from_one_to_the_difficulty():
    problems = generate_problems(TaskSpec(task="addition_mix", difficulty=3), 300, seed=0)
    counts = Counter(p.difficulty for p in problems)
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 60  # ~100 each of 300
    for p in problems:
        a, b = map(int, re.fullmatch(r"What is (\d+)\+(\d+)\?", p.question).groups())
        assert p.task == "addition_mix" and int(p.answer) == a + b
        assert len(str(a)) == p.difficulty or (p.difficulty == 1 and a == 0)


def test_the_gold_completion_passes_the_verifier_and_a_near_miss_fails():
    (row,) = generate(TaskSpec(task="addition_mix", difficulty=3), 1, seed=4)
    verifier = VERIFIERS.get(row["verifier"])()
    assert row["verifier"] == "addition_mix/boxed"
    assert verifier(row["completion"][0]["content"], row["solution"]).correct
    assert not verifier(f"\\boxed{{{int(row['solution']) + 1}}}", row["solution"]).correct
