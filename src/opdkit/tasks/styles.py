"""Answer styles: how a problem is asked and how an answer is written, one per verifier family of the papers.

- ``boxed``: the prompt ends "Answer in \\boxed{}."; a completion ``\\boxed{579}``; gold ``579``.
- ``mcq``: option lines ``A: ..``, "Answer as <answer>X</answer>."; ``<answer>B</answer>``; gold ``B``.
- ``tool``: the ``submit`` tool and the ReAct format; ``Action: submit`` then
  ``Action Input: {"answer": "579"}``; gold a ToolAlpaca JSON list of calls.

§9.1-§9.3: the gold strings are in each family's own format (the tool gold is a JSON list of
``{"Action": name, "Action_Input": JSON string}``), so the papers' verifiers can read them too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from opdkit.core.registry import Registry
from opdkit.tasks.base import Problem, Task

LETTERS = "ABCD"
TOOL_NAME = "submit"


@dataclass(frozen=True)
class Style:
    """A style is data: the instruction line, how to state an answer, the gold string, option lines."""

    name: str
    instruction: str  # appended after the question (and options) unless a spec turns instructions off
    render: Callable[[Problem, str], str]  # completion stating an answer (mcq: an option's text)
    gold: Callable[[Problem], str]  # the ``solution`` string
    options: Callable[[Problem], str] = lambda problem: ""  # text between the question and the instruction

    def user_text(self, problem: Problem, *, instruction: bool = True) -> str:
        return problem.question + self.options(problem) + (self.instruction if instruction else "")

    def reference(self, problem: Problem) -> str:
        return self.render(problem, problem.answer)

    def wrong_completion(self, task: Task, problem: Problem, rng: random.Random) -> str:
        """A completion in this style that states a wrong answer (an MCQ distractor for ``mcq``)."""
        if self.name == "mcq":
            wrong = [i for i in range(4) if i != problem.answer_index]
            return self.render(problem, problem.options[rng.choice(wrong)])
        return self.render(problem, task.wrong_answer(problem, rng))


def _mcq_options(problem: Problem) -> str:
    return "".join(f"\n{LETTERS[i]}: {opt}" for i, opt in enumerate(problem.options))


def _mcq_render(problem: Problem, answer: str) -> str:
    return f"<answer>{LETTERS[problem.options.index(answer)]}</answer>"


def tool_call_text(answer: str) -> str:
    """The ToolAlpaca-style call that submits ``answer``."""
    return f"Action: {TOOL_NAME}\nAction Input: {json.dumps({'answer': answer})}"


def tool_gold(answer: str) -> str:
    """§9.3 gold format: a JSON list of calls whose Action_Input is itself a JSON string."""
    return json.dumps([{"Action": TOOL_NAME, "Action_Input": json.dumps({"answer": answer})}])


STYLES: Registry[Style] = Registry("answer style")
STYLES.add(
    "boxed", Style("boxed", "\nAnswer in \\boxed{}.", lambda p, a: f"\\boxed{{{a}}}", lambda p: p.answer)
)
STYLES.add(
    "mcq",
    Style(
        "mcq", "\nAnswer as <answer>X</answer>.", _mcq_render, lambda p: LETTERS[p.answer_index], _mcq_options
    ),
)
STYLES.add(
    "tool",
    Style(
        "tool",
        f'\nTool {TOOL_NAME}: {{"answer": str}}. Reply with Action: and Action Input:.',
        lambda p, a: tool_call_text(a),
        lambda p: tool_gold(p.answer),
    ),
)
