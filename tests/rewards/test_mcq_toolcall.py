"""Multiple-choice (§9.2) and tool-call (§9.3, §9.4) verifiers."""

import json

import pytest

from opdkit.rewards import MultipleChoiceVerifier, ToolCallVerifier, make_verifier
from opdkit.rewards.toolcall import parse_gold_calls

mcq = MultipleChoiceVerifier()


@pytest.mark.parametrize(
    ("completion", "pred", "correct"),
    [
        ("<reasoning>\nB fits.\n</reasoning>\n<answer>\nB\n</answer>", "B", True),
        ("<answer>A</answer> no wait <answer> B </answer>", "B", True),  # the last tag counts
        ("<answer>b</answer>", "b", False),  # exact, case-sensitive
        ("<answer>B: 1.69</answer>", "B: 1.69", False),  # restating the option text is wrong
        ("<answer>B", "B", True),  # an unclosed tag runs to the end
        ("B", "B", True),  # no tag: the whole response (the reference accepts a bare letter)
        ("The answer is B.", "The answer is B.", False),
    ],
)
def test_mcq(completion, pred, correct):
    verdict = mcq(completion, "B")
    assert (verdict.pred, verdict.correct, verdict.feedback) == (pred, correct, "")


def calls(*pairs) -> str:
    """A gold in the ToolAlpaca format: a JSON list whose Action_Input values are JSON strings."""
    return json.dumps([{"Action": name, "Action_Input": json.dumps(args)} for name, args in pairs])


def react(*pairs, raw_inputs=None) -> str:
    steps = []
    for i, (name, args) in enumerate(pairs):
        text = raw_inputs[i] if raw_inputs else json.dumps(args)
        steps.append(f"Thought: I should call {name}.\nAction: {name}\nAction Input: {text}\nObservation: ok")
    return "\n".join(steps)


tool = ToolCallVerifier()


def test_toolcall_exact_match_with_reordered_keys():
    gold = calls(("search", {"q": "cats", "page": 2}))
    verdict = tool(react(("search", {"page": 2, "q": "cats"})), gold)
    assert (verdict.correct, verdict.feedback) == (True, "")
    assert verdict.pred == 'Actions: [\'search\'], Inputs: {"page": 2, "q": "cats"}'


def test_toolcall_value_types_matter():
    gold = calls(("search", {"page": 2}))
    verdict = tool(react(("search", {"page": "2"})), gold)
    assert not verdict.correct
    assert verdict.feedback == "Action inputs mismatch: predicted {'page': '2'}, expected {'page': 2}"


def test_toolcall_duplicated_actions_are_a_multiset():
    gold = calls(("get", {"id": 1}), ("get", {"id": 2}))
    # Order is free, but the count matters; inputs merge with later keys winning ({"id": 2}).
    assert tool(react(("get", {"id": 1}), ("get", {"id": 2})), gold).correct
    once = tool(react(("get", {"id": 2})), gold)
    assert not once.correct
    assert once.feedback == "Actions mismatch: predicted ['get'], expected ['get', 'get']"


def test_toolcall_both_parts_wrong_joined_with_semicolon():
    verdict = tool(react(("fetch", {"q": 1})), calls(("search", {"q": 2})))
    assert verdict.feedback == (
        "Actions mismatch: predicted ['fetch'], expected ['search']; "
        "Action inputs mismatch: predicted {'q': 1}, expected {'q': 2}"
    )


def test_toolcall_nested_inputs_need_brace_matching():
    args = {"filter": {"color": "wild", "size": {"min": 1}}, "note": "a } inside a string"}
    gold = calls(("searchAxolotlImages", args))
    assert tool(react(("searchAxolotlImages", args)), gold).correct
    # The reference's non-greedy regex stops at the first "}", so the nested object is lost.
    compat = make_verifier("toolcall", compat_regex=True)(react(("searchAxolotlImages", args)), gold)
    assert not compat.correct
    assert compat.feedback.startswith("Action inputs mismatch: predicted {}, expected")


def test_toolcall_missing_tags_and_bad_json():
    gold = calls(("getRandomAxolotlImage", {}))
    nothing = tool("I would look at a picture of an axolotl.", gold)
    assert (nothing.correct, nothing.pred) == (False, None)
    assert nothing.feedback == "Actions mismatch: predicted [], expected ['getRandomAxolotlImage']"
    # An empty-input call: "{}" as the gold input, and "{}" or no object at all in the completion.
    assert tool(react(("getRandomAxolotlImage", {})), gold).correct
    assert tool("Action: getRandomAxolotlImage\nAction Input: none", gold).correct
    bad = tool("Action: search\nAction Input: {'q': 'single quotes'}", calls(("search", {"q": "x"})))
    assert bad.feedback == "Action inputs mismatch: predicted {}, expected {'q': 'x'}"


def test_toolcall_truncated_mid_input():
    gold = calls(("search", {"q": "cats"}))
    verdict = tool('Action: search\nAction Input: {"q": "ca', gold, truncated=True)
    assert not verdict.correct


def test_gold_parsing():
    parsed = parse_gold_calls(json.dumps([{"Action": "a", "Action_Input": "not json"}, {"Action": "b"}]))
    assert (parsed.actions, parsed.inputs) == (["a", "b"], {})  # unparsable or missing inputs add nothing
    assert parse_gold_calls('[{"Action": "a", "Action_Input": {"x": 1}}]').inputs == {"x": 1}
    with pytest.raises(ValueError, match="not JSON"):
        parse_gold_calls("[{")
    with pytest.raises(ValueError, match="needs a string 'Action'"):
        parse_gold_calls('[{"action": "a"}]')
