"""The pieces every synthetic task shares: the problem record, the task protocol and the task registry.

A task draws a ``Problem`` from a seeded ``random.Random`` at a given difficulty: the question text, the
canonical answer string, three wrong-but-plausible answers (the multiple-choice distractors) and a way to
produce other wrong answers (for feedback-formatted warm-start prompts). How the answer is asked for and
written (``\\boxed{}``, ``<answer>X</answer>`` or a tool call) is the style's business (``styles.py``).

Tasks never check answers: the verifiers in ``opdkit.rewards.synthetic`` do, from the gold string alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from opdkit.core.registry import Registry


@dataclass(frozen=True)
class Problem:
    """One synthetic problem, independent of the answer style.

    task: the task name ("addition", ...); difficulty: the knob it was drawn with.
    question: the question text, e.g. "What is 123+456?".
    answer: the canonical answer, e.g. "579". For countdown: one valid expression (others may be right too).
    options: the four multiple-choice options (the answer is ``options[answer_index]``), drawn for every
      problem so the same seed gives the same problem in every style.
    """

    task: str
    difficulty: int
    question: str
    answer: str
    options: tuple[str, str, str, str]
    answer_index: int


class Task(Protocol):
    """A generator of problems of one kind."""

    name: str
    default_difficulty: int

    def problem(self, rng: random.Random, difficulty: int) -> Problem:
        """Draw one problem; deterministic given the state of ``rng``."""
        ...

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        """A plausible wrong answer (a near miss, never the right one)."""
        ...


TASKS: Registry[Task] = Registry("task")


def with_options(
    task: str, difficulty: int, question: str, answer: str, distractors: list[str], rng: random.Random
) -> Problem:
    """Build a ``Problem`` with the answer placed among three distinct distractors at a random position."""
    if len(set(distractors)) != 3 or answer in distractors:
        raise ValueError(
            f"{task}: need three distinct distractors different from the answer, got {distractors}"
        )
    options = list(distractors)
    answer_index = rng.randrange(4)
    options.insert(answer_index, answer)
    return Problem(
        task, difficulty, question, answer, (options[0], options[1], options[2], options[3]), answer_index
    )


def distinct_near_misses(
    answer: str, rng: random.Random, make: Callable[[random.Random], str], count: int = 3
) -> list[str]:
    """``count`` distinct values of ``make(rng)`` different from ``answer`` (retries until found)."""
    out: list[str] = []
    for _ in range(1000):
        cand = make(rng)
        if cand != answer and cand not in out:
            out.append(cand)
            if len(out) == count:
                return out
    raise RuntimeError(f"could not draw {count} distinct wrong answers near {answer!r}")
