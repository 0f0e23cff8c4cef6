"""Seeded generation of dataset rows with TRL's column names.

Each row is a plain dict::

    {"id": "addition-d3-s0-0",
     "prompt": [{"role": "user", "content": "What is 123+456?\\nAnswer in \\\\boxed{}."}],
     "completion": [{"role": "assistant", "content": "\\\\boxed{579}"}],   # reference, for warm start
     "solution": "579",                                                     # gold, in the verifier's format
     "verifier": "addition/boxed",                                          # a name in rewards.VERIFIERS
     "data_source": "synthetic/addition"}

``prompt`` / ``completion`` are TRL's conversational prompt-completion columns. The same ``(spec, seed)``
always gives the same rows; ``generate_splits`` keeps the test questions out of the training set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from opdkit.tasks.base import TASKS, Problem
from opdkit.tasks.styles import STYLES


@dataclass(frozen=True)
class TaskSpec:
    """Which synthetic task, how hard, in which answer style.

    task: a name in ``TASKS`` ("addition", "countdown", "sorting").
    difficulty: the task's knob (addition: digits; countdown: numbers; sorting: list length); None = default.
    style: a name in ``STYLES`` ("boxed", "mcq", "tool").
    instruction: end the user message with the style's one-line format instruction ("Answer in \\boxed{}.").
      Tiny models learn the format from the warm start without it, and every prompt is ~20 tokens shorter.
    system_prompt: an optional system message put before the question.
    """

    task: str = "addition"
    difficulty: int | None = None
    style: str = "boxed"
    instruction: bool = True
    system_prompt: str | None = None

    def resolved_difficulty(self) -> int:
        return TASKS.get(self.task).default_difficulty if self.difficulty is None else self.difficulty

    @property
    def verifier(self) -> str:
        """The verifier's registry name, ``"<task>/<style>"``."""
        return f"{self.task}/{self.style}"

    @property
    def data_source(self) -> str:
        return f"synthetic/{self.task}"


def generate_problems(spec: TaskSpec, n: int, seed: int) -> list[Problem]:
    """``n`` problems drawn from ``random.Random(seed)``; independent of the style."""
    task = TASKS.get(spec.task)
    STYLES.get(spec.style)  # fail early on an unknown style
    rng = random.Random(seed)
    return [task.problem(rng, spec.resolved_difficulty()) for _ in range(n)]


def prompt_messages(spec: TaskSpec, problem: Problem) -> list[dict[str, str]]:
    """The chat messages that ask ``problem`` in ``spec``'s style."""
    messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    messages.append(
        {"role": "user", "content": STYLES.get(spec.style).user_text(problem, instruction=spec.instruction)}
    )
    return messages


def make_row(spec: TaskSpec, problem: Problem, row_id: str) -> dict[str, Any]:
    """One dataset row (see the module docstring)."""
    style = STYLES.get(spec.style)
    return {
        "id": row_id,
        "prompt": prompt_messages(spec, problem),
        "completion": [{"role": "assistant", "content": style.reference(problem)}],
        "solution": style.gold(problem),
        "verifier": spec.verifier,
        "data_source": spec.data_source,
    }


def generate(spec: TaskSpec, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows; deterministic in ``(spec, seed)``."""
    prefix = f"{spec.task}-d{spec.resolved_difficulty()}-s{seed}"
    return [make_row(spec, p, f"{prefix}-{i}") for i, p in enumerate(generate_problems(spec, n, seed))]


@dataclass(frozen=True)
class Splits:
    train: list[Problem]
    test: list[Problem]


def generate_splits(spec: TaskSpec, n_train: int, n_test: int, seed: int) -> Splits:
    """Disjoint train/test problems: the test set comes first from ``seed``; train questions that repeat a
    test question are dropped and replaced, so held-out evaluation never sees a training question."""
    test = generate_problems(spec, n_test, seed)
    held_out = {p.question for p in test}
    task, rng = TASKS.get(spec.task), random.Random(seed + 1_000_003)
    train: list[Problem] = []
    for _ in range(100 * n_train + 1000):
        if len(train) == n_train:
            break
        p = task.problem(rng, spec.resolved_difficulty())
        if p.question not in held_out:
            train.append(p)
    if len(train) < n_train:
        raise ValueError(
            f"{spec.task} at difficulty {spec.resolved_difficulty()} has too few distinct problems"
        )
    return Splits(train=train, test=test)


def wrong_completion(spec: TaskSpec, problem: Problem, rng: random.Random) -> str:
    """A completion in ``spec``'s style with a plausible wrong answer (for feedback-formatted prompts)."""
    return STYLES.get(spec.style).wrong_completion(TASKS.get(spec.task), problem, rng)
