"""Verifier edge cases against a transcription of the reference (lasgroup/SDPO ``feedback/{mcq,tooluse}.py``
and the trainer's feedback collection), each expected value worked out by hand from the reference's rules:

- MCQ: pred = ``text.split("<answer>")[-1].split("</answer>")[0].strip()``;
- tool use: names by ``Action:\\s*(\\w+)``, inputs by the non-greedy ``{.*?}`` (opdkit's ``compat_regex``);
- feedback: a string counts only when ``feedback.strip()`` is non-empty.
"""

import json

import pytest

from opdkit.data import Example, find_benchmarks_dir, load_benchmark
from opdkit.rewards import MultipleChoiceVerifier, make_verifier
from opdkit.teachers.reprompt import plan_reprompts, reprompt_user_text
from opdkit.train.config import load_config
from opdkit.train.setup import with_verifier_options


@pytest.mark.parametrize(
    ("completion", "pred", "correct"),
    [
        # split("<answer>")[-1] is the whole text (no opening tag); split("</answer>")[0] is "B"
        ("B</answer>", "B", True),
        ("B\n</answer>\n", "B", True),
        # ... the whole reasoning up to the closing tag is the pred: wrong
        ("<reasoning>x</reasoning>\nB\n</answer>", "<reasoning>x</reasoning>\nB", False),
        # the first closing tag after the last opening one ends the answer
        ("<answer>A</answer> then B</answer>", "A", False),
        ("<answer> B </answer></answer>", "B", True),
        # no tag at all: the whole text, stripped
        ("  B  ", "B", True),
    ],
)
def test_mcq_split_semantics(completion, pred, correct):
    verdict = MultipleChoiceVerifier()(completion, "B")
    assert (verdict.pred, verdict.correct) == (pred, correct)


OPTIONAL_GOLD = json.dumps(
    [
        {"Action": "getUserProfile", "Action_Input": json.dumps({"userId": "u1"})},
        {"Action": "[Optional]updateUserProfile", "Action_Input": json.dumps({"userId": "u1", "bio": "hi"})},
    ]
)
PERFECT = (
    'Action: getUserProfile\nAction Input: {"userId": "u1"}\nObservation: ok\n'
    'Action: [Optional]updateUserProfile\nAction Input: {"userId": "u1", "bio": "hi"}'
)


def test_bracketed_action_names():
    # opdkit reads "[Optional]updateUserProfile" as one name: the gold's own calls score 1
    assert make_verifier("toolcall")(PERFECT, OPTIONAL_GOLD).correct
    # The reference's \w+ cannot start at "[", so only getUserProfile is read; the inputs still merge to
    # {"userId": "u1", "bio": "hi"} = the gold's, so only the actions mismatch.
    compat = make_verifier("toolcall", compat_regex=True)(PERFECT, OPTIONAL_GOLD)
    assert not compat.correct
    assert compat.feedback == (
        "Actions mismatch: predicted ['getUserProfile'], "
        "expected ['getUserProfile', '[Optional]updateUserProfile']"
    )
    # Without the tag the name differs from the gold's under both parsers.
    plain = PERFECT.replace("[Optional]", "")
    assert not make_verifier("toolcall")(plain, OPTIONAL_GOLD).correct


ROOT = find_benchmarks_dir()


@pytest.mark.realdata
@pytest.mark.skipif(ROOT is None, reason="../shared/data/benchmarks is not present")
def test_every_tooluse_test_row_is_solvable_by_its_own_gold():
    """A completion that states each gold call scores 1 on all 68 rows (row 4079 has the bracketed name)."""
    for ex in load_benchmark("tooluse"):
        calls = json.loads(ex.ground_truth)
        text = "\n".join(f"Action: {c['Action']}\nAction Input: {c['Action_Input']}" for c in calls)
        assert make_verifier("toolcall")(text, ex.ground_truth).correct, ex.problem_id


def test_whitespace_only_feedback_is_no_feedback():
    # Rows 0-2 are one group with no success, so only feedback can give a teacher context.
    plan = plan_reprompts([7, 7, 7], [False, False, False], ["", " \n\t", "Actions mismatch"],
                          include_environment_feedback=True)  # fmt: skip
    assert plan.use_feedback == [False, False, True]
    assert plan.sd_mask == [False, False, True]
    assert reprompt_user_text("Q", None, "  \n") == "Q"  # no feedback section, no instruction


def _row(verifier: str, options: dict | None = None) -> Example:
    extra = {"verifier_options": options} if options else {}
    return Example("p", [{"role": "user", "content": "q"}], "[]", verifier, "src", extra=extra)


def test_verifier_options_from_the_config():
    cfg = load_config(None, ["data.verifier_options={toolcall: {compat_regex: true}}"])
    options = {**cfg.data.verifier_options, "math": {"abs_tol": 0.5, "timeout_s": 2.0}}
    rows = with_verifier_options([_row("toolcall"), _row("mcq"), _row("math", {"abs_tol": 0.1})], options)
    assert [r.verifier_options for r in rows] == [
        {"compat_regex": True},
        {},
        {"abs_tol": 0.1, "timeout_s": 2.0},  # the row's own tolerance wins over the config's
    ]
    with pytest.raises(ValueError, match=r"data\.verifier_options\.toolcall: .*valid options: compat_regex"):
        with_verifier_options([_row("toolcall")], {"toolcall": {"compat": True}})
