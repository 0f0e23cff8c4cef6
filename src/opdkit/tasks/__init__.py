"""Synthetic verifiable tasks: addition (default), countdown and sorting, each in three answer styles.

    from opdkit.tasks import TaskSpec, generate

    rows = generate(TaskSpec(task="addition", difficulty=3, style="boxed"), n=1000, seed=0)
    rows[0]["prompt"], rows[0]["solution"], rows[0]["verifier"]   # chat messages, "579", "addition/boxed"

Difficulty knobs: addition = digits per operand, countdown = how many numbers, sorting = list length. Styles:
``boxed`` (math), ``mcq`` (4 options, ``<answer>X</answer>``), ``tool`` (ToolAlpaca ``Action:`` /
``Action Input:``). Verifiers for every ``<task>/<style>`` live in ``opdkit.rewards.synthetic``; this package
only generates (it imports no other L1 package).
"""

from opdkit.tasks import addition, countdown, sorting  # noqa: F401  (registers the tasks)
from opdkit.tasks.base import TASKS, Problem, Task
from opdkit.tasks.generate import (
    Splits,
    TaskSpec,
    generate,
    generate_problems,
    generate_splits,
    make_row,
    prompt_messages,
    wrong_completion,
)
from opdkit.tasks.styles import STYLES, Style, tool_call_text, tool_gold

__all__ = [
    "STYLES",
    "TASKS",
    "Problem",
    "Splits",
    "Style",
    "Task",
    "TaskSpec",
    "generate",
    "generate_problems",
    "generate_splits",
    "make_row",
    "prompt_messages",
    "tool_call_text",
    "tool_gold",
    "wrong_completion",
]
