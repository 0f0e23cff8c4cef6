import random

import opdkit.rewards.synthetic  # noqa: F401  (registers the synthetic verifiers)
from opdkit.rewards.base import VERIFIERS
from opdkit.tasks import TaskSpec, generate_problems, prompt_messages
from opdkit.teachers.reprompt import RepromptTemplate
from opdkit.warmstart.prompts import COMPACT_TEMPLATE, PROMPT_FORMATS, PromptContext

SPEC = TaskSpec(task="addition", difficulty=2, instruction=False)


def ctx(template: RepromptTemplate | None = None):
    template = template or RepromptTemplate()
    return PromptContext(SPEC, template, VERIFIERS.get(SPEC.verifier)(), random.Random(0))


def test_plain_is_the_question_as_asked():
    problem = generate_problems(SPEC, 1, seed=0)[0]
    assert PROMPT_FORMATS.get("plain")(ctx(), problem) == prompt_messages(SPEC, problem)


def test_demo_format_is_the_sdpo_reprompt_with_the_reference_solution():
    problem = generate_problems(SPEC, 1, seed=0)[0]
    text = PROMPT_FORMATS.get("demo")(ctx(), problem)[-1]["content"]
    # docs/algorithms.md §4.4 with the lasgroup strings
    demo = f"\\boxed{{{problem.answer}}}"
    assert (
        text == f"{problem.question}\nCorrect solution:\n\n{demo}\n\nCorrectly solve the original question."
    )
    compact = PROMPT_FORMATS.get("demo")(ctx(COMPACT_TEMPLATE), problem)[-1]["content"]
    assert compact == f"{problem.question}\nSolution: \\boxed{{{problem.answer}}}\nSolve it again."


def test_feedback_format_holds_the_verifier_feedback_on_a_wrong_attempt_not_the_answer():
    for problem in generate_problems(SPEC, 20, seed=1):
        text = PROMPT_FORMATS.get("feedback")(ctx(COMPACT_TEMPLATE), problem)[-1]["content"]
        assert text.startswith(problem.question + "\nFeedback: Your answer ")
        assert "is wrong" in text and text.endswith("\nSolve it again.")
        assert f"\\boxed{{{problem.answer}}}" not in text
    both = PROMPT_FORMATS.get("demo_feedback")(ctx(COMPACT_TEMPLATE), problem)[-1]["content"]
    assert "\nSolution: " in both and "\nFeedback: " in both
