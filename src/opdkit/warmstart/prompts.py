"""The warm start's prompt formats: the plain question and the SDPO self-teacher's reprompted variants.

§4.4: the self-teacher sees the original conversation with its last user message rewritten to
hold a correct demonstration and/or the verifier's feedback on an unsuccessful attempt. A model trained from
scratch has never seen such a message, so without these formats in its warm start the self-teacher reads
nothing from its context and SDPO has no signal (measured). The target is always the reference completion.

- ``plain``: the question as asked.
- ``demo``: + a correct solution (the reference completion, as a successful sibling would write it).
- ``feedback``: + the verifier's feedback on a near-miss attempt (``tasks.wrong_completion``).
- ``demo_feedback``: both (only used when ``feedback_only_without_solution`` is off, §4.3).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opdkit.core.registry import Registry
from opdkit.rewards.base import Verifier
from opdkit.tasks import STYLES, Problem, TaskSpec, prompt_messages, wrong_completion
from opdkit.teachers.reprompt import RepromptTemplate, reprompt_user_text


@dataclass(frozen=True)
class PromptContext:
    """What a format needs besides the problem: the spec, the reprompt template, the verifier and an RNG."""

    spec: TaskSpec
    template: RepromptTemplate
    verifier: Verifier
    rng: random.Random


def _with_user_text(spec: TaskSpec, problem: Problem, text: str) -> list[dict[str, str]]:
    messages = prompt_messages(spec, problem)
    messages[-1] = {"role": "user", "content": text}
    return messages


def _user_text(spec: TaskSpec, problem: Problem) -> str:
    return prompt_messages(spec, problem)[-1]["content"]


def _feedback(ctx: PromptContext, problem: Problem) -> str:
    attempt = wrong_completion(ctx.spec, problem, ctx.rng)
    return ctx.verifier(attempt, STYLES.get(ctx.spec.style).gold(problem)).feedback


def _plain(ctx: PromptContext, problem: Problem) -> list[dict[str, str]]:
    return prompt_messages(ctx.spec, problem)


def _demo(ctx: PromptContext, problem: Problem) -> list[dict[str, str]]:
    demo = STYLES.get(ctx.spec.style).reference(problem)
    return _with_user_text(
        ctx.spec, problem, reprompt_user_text(_user_text(ctx.spec, problem), demo, None, ctx.template)
    )


def _feedback_only(ctx: PromptContext, problem: Problem) -> list[dict[str, str]]:
    text = reprompt_user_text(_user_text(ctx.spec, problem), None, _feedback(ctx, problem), ctx.template)
    return _with_user_text(ctx.spec, problem, text)


def _demo_and_feedback(ctx: PromptContext, problem: Problem) -> list[dict[str, str]]:
    demo = STYLES.get(ctx.spec.style).reference(problem)
    text = reprompt_user_text(_user_text(ctx.spec, problem), demo, _feedback(ctx, problem), ctx.template)
    return _with_user_text(ctx.spec, problem, text)


PROMPT_FORMATS: Registry[Callable[[PromptContext, Problem], list[dict[str, Any]]]] = Registry("prompt format")
PROMPT_FORMATS.add("plain", _plain)
PROMPT_FORMATS.add("demo", _demo)
PROMPT_FORMATS.add("feedback", _feedback_only)
PROMPT_FORMATS.add("demo_feedback", _demo_and_feedback)

COMPACT_TEMPLATE = RepromptTemplate(
    solution="\nSolution: {demonstration}",
    feedback="\nFeedback: {feedback}",
    instruction="\nSolve it again.",
)
"""A shorter reprompt for tiny character-level models: the same structure as §4.4 with fewer
characters (a demonstration prompt ~60 instead of ~100 tokens), which roughly halves warm-start time. The
self-teacher of a run must use the template its model was warm-started with."""
