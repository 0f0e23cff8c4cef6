import random

import pytest

import opdkit.rewards.synthetic  # noqa: F401  (registers the synthetic verifiers)
from opdkit.core.registry import UnknownNameError
from opdkit.rewards.base import VERIFIERS
from opdkit.rewards.synthetic import evaluate_expression
from opdkit.tasks import (
    TaskSpec,
    generate,
    generate_problems,
    generate_splits,
    make_row,
    wrong_completion,
)

SPECS = [
    TaskSpec(task=t, style=s) for t in ("addition", "countdown", "sorting") for s in ("boxed", "mcq", "tool")
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.verifier)
def test_rows_are_deterministic_per_seed_and_use_trl_columns(spec):
    rows = generate(spec, 20, seed=3)
    assert rows == generate(spec, 20, seed=3)
    assert rows != generate(spec, 20, seed=4)
    for row in rows:
        assert set(row) == {"id", "prompt", "completion", "solution", "verifier", "data_source"}
        assert row["prompt"][-1]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        assert row["verifier"] == spec.verifier and row["data_source"] == f"synthetic/{spec.task}"
    assert len({row["id"] for row in rows}) == 20


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.verifier)
def test_reference_verifies_and_perturbed_completions_do_not(spec):
    verify = VERIFIERS.get(spec.verifier)()
    rng = random.Random(0)
    for problem, row in zip(generate_problems(spec, 50, seed=1), generate(spec, 50, seed=1)):
        good = verify(row["completion"][0]["content"], row["solution"])
        assert good.correct and good.score == 1.0 and good.feedback == ""
        wrong_text = wrong_completion(spec, problem, rng)
        bad = verify(wrong_text, row["solution"])
        assert not bad.correct and bad.score == 0.0
        assert bad.feedback and bad.pred is not None


def test_same_seed_gives_the_same_problem_in_every_style():
    questions = {
        s: [p.question for p in generate_problems(TaskSpec(style=s), 10, seed=0)] for s in ("boxed", "mcq")
    }
    assert questions["boxed"] == questions["mcq"]


@pytest.mark.parametrize("digits", [1, 2, 4])
def test_addition_difficulty_is_digits_per_operand(digits):
    for p in generate_problems(TaskSpec(task="addition", difficulty=digits), 30, seed=0):
        a, b = p.question.removeprefix("What is ").removesuffix("?").split("+")
        assert len(a) == len(b) == digits
        assert int(p.answer) == int(a) + int(b)


def test_sorting_and_countdown_difficulty():
    for p in generate_problems(TaskSpec(task="sorting", difficulty=7), 20, seed=0):
        assert len(p.answer.split(", ")) == 7
        assert [int(v) for v in p.answer.split(", ")] == sorted(int(v) for v in p.answer.split(", "))
    for p in generate_problems(TaskSpec(task="countdown", difficulty=4), 20, seed=0):
        value, numbers = evaluate_expression(p.answer)
        target = int(p.question.split()[1])  # "Make <target> from ..."
        assert value == target and len(numbers) == 4
        shown = p.question.split(" from ")[1].split(" (")[0]
        assert shown == ", ".join(map(str, sorted(numbers)))


def test_mcq_options_hold_the_answer_once():
    for p in generate_problems(TaskSpec(style="mcq"), 50, seed=2):
        assert len(set(p.options)) == 4 and p.options[p.answer_index] == p.answer
    letters = {
        make_row(TaskSpec(style="mcq"), p, "x")["solution"] for p in generate_problems(TaskSpec(), 60, 0)
    }
    assert letters == {"A", "B", "C", "D"}


def test_splits_are_disjoint_and_deterministic():
    spec = TaskSpec(task="addition", difficulty=1)  # only 100 distinct questions: collisions are certain
    splits = generate_splits(spec, n_train=60, n_test=20, seed=0)
    assert len(splits.train) == 60 and len(splits.test) == 20
    assert not {p.question for p in splits.train} & {p.question for p in splits.test}
    assert splits == generate_splits(spec, n_train=60, n_test=20, seed=0)


def test_bad_specs_are_refused_with_the_valid_names():
    with pytest.raises(UnknownNameError, match="addition, addition_mix, countdown, sorting"):
        generate(TaskSpec(task="division"), 1, 0)
    with pytest.raises(UnknownNameError, match="boxed, mcq, tool"):
        generate(TaskSpec(style="latex"), 1, 0)
    with pytest.raises(ValueError, match="digits"):
        generate(TaskSpec(difficulty=0), 1, 0)


def test_system_prompt_goes_first():
    row = generate(TaskSpec(system_prompt="Be exact."), 1, 0)[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
