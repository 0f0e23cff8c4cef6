"""Verifiers as TRL reward functions: f(completions, **columns) -> list[float]."""

import pytest

from opdkit.rewards import MultipleChoiceVerifier, trl_reward


def test_plain_and_conversational_completions():
    reward = trl_reward("mcq")
    assert reward.__name__ == "mcq_reward"
    plain = reward(["<answer>A</answer>", "<answer>B</answer>"], solution=["A", "A"], prompts=["p", "q"])
    assert plain == [1.0, 0.0]
    chat = [[{"role": "assistant", "content": "<answer>C</answer>"}], [{"role": "assistant", "content": "x"}]]
    assert reward(chat, ground_truth=["C", "C"]) == [1.0, 0.0]


def test_ground_truth_column_order_and_errors():
    reward = trl_reward(MultipleChoiceVerifier(), name="sci")
    assert reward.__name__ == "sci"
    # "solution" wins over "answer" when both are present.
    assert reward(["<answer>A</answer>"], solution=["A"], answer=["B"]) == [1.0]
    assert reward(["<answer>B</answer>"], answer=["B"], trainer_state=None) == [1.0]
    with pytest.raises(
        ValueError, match="expected one of solution, ground_truth, answer; got columns prompts"
    ):
        reward(["x"], prompts=["p"])
    with pytest.raises(ValueError, match="2 values for 1 completions"):
        reward(["x"], solution=["A", "B"])
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        reward([42], solution=["A"])


def test_math_reward_with_options_runs_as_a_batch():
    reward = trl_reward("math", feedback="oracle", workers=2)
    completions = [r"so \boxed{\frac{\pi}{2}}", "no box", r"\boxed{0.5}"]
    assert reward(completions, solution=[r"\pi/2", "1", r"\frac{1}{2}"]) == [1.0, 0.0, 1.0]
    with pytest.raises(TypeError, match="only accepted with a verifier name"):
        trl_reward(MultipleChoiceVerifier(), workers=2)
