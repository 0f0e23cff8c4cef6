"""Parsing a recorded vLLM answer (tests/teachers/data) and refusing malformed rows."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from opdkit.teachers.completions import (
    MalformedResponseError,
    MalformedRowError,
    choices_by_index,
    completion_request,
    parse_choice,
)

DATA = Path(__file__).parent / "data" / "vllm_completions_echo_prompt_logprobs.json"
# The request behind the fixture (data/README.md): row 0 = prompt [16, 10, 16, 28] + response [17, 151645],
# row 1 = prompt [18, 9, 18] + response [28, 24, 151645].
IDS = [[16, 10, 16, 28, 17, 151645], [18, 9, 18, 28, 24, 151645]]
N_RESPONSE = [2, 3]
# Expected values read off the fixture: the last |y| prompt_logprobs entries (docs/algorithms.md §5.1).
# Row 0: position 4 scores id 17 at -0.00390625 (top-2: 17, 18); position 5 scores 151645 at -2.25, rank 3,
#   whose top-2 are 198 (-0.375) and 13 (-1.5).
# Row 1: positions 3, 4, 5 score 28, 24, 151645, each the most likely token.
WANT_LOGP = [[-0.00390625, -2.25], [-0.03125, -0.5, -0.0078125]]
WANT_TOP_IDS = [[[17, 18], [198, 13]], [[28, 284], [24, 16], [151645, 151643]]]
WANT_TOP_LOGP = [
    [[-0.00390625, -5.75], [-0.375, -1.5]],
    [[-0.03125, -3.96875], [-0.5, -1.0], [-0.0078125, -5.0078125]],
]


@pytest.fixture
def body() -> dict:
    return json.loads(DATA.read_text())


def test_request_body_is_the_documented_one():
    body = completion_request([[1, 2, 3]], top_k=2, model="m")
    assert body == {
        "model": "m",
        "prompt": [[1, 2, 3]],
        "echo": True,
        "max_tokens": 1,
        "temperature": 1.0,
        "logprobs": 2,
        "prompt_logprobs": 2,
        "return_tokens_as_token_ids": True,
    }
    assert "logprob_temperature" in completion_request([[1, 2]], top_k=0, model=None, logprob_temperature=0.6)


@pytest.mark.parametrize("source", ["prompt_logprobs", "logprobs"])
def test_recorded_vllm_response_parses(body, source):
    choices = choices_by_index(body, 2)
    for i, choice in enumerate(choices):
        if source == "logprobs":  # the OpenAI echo lists alone give the same scores
            choice = {k: v for k, v in choice.items() if k != "prompt_logprobs"}
        got = parse_choice(choice, IDS[i], N_RESPONSE[i], top_k=2)
        assert got.logp_T == WANT_LOGP[i]
        assert got.topk_ids_T_K == WANT_TOP_IDS[i]
        assert got.topk_logp_T_K == WANT_TOP_LOGP[i]
        plain = parse_choice(choice, IDS[i], N_RESPONSE[i], top_k=0)
        assert plain.logp_T == WANT_LOGP[i] and plain.topk_ids_T_K is None


def test_choices_are_ordered_by_index(body):
    body["choices"].reverse()
    assert [c["index"] for c in choices_by_index(body, 2)] == [0, 1]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["prompt_logprobs"].pop(), "5 entries for a 6-token sequence"),  # truncated
        (lambda c: c["prompt_logprobs"].append({"5": {"logprob": -1.0}}), "7 entries"),  # too long
        (lambda c: c.update(prompt_logprobs=[None, *c["prompt_logprobs"][:-1]]), "misaligned"),  # shifted
        (lambda c: c["prompt_logprobs"][5]["151645"].update(logprob=None), "not a number"),  # NaN -> null
        (lambda c: c["prompt_logprobs"][4]["17"].update(logprob=0.5), "not finite and <= 0"),
        (
            lambda c: [c["prompt_logprobs"][5].pop(k) for k in ("13", "198")],
            r"\[5\]: 1 alternatives, 2 asked",
        ),
        (lambda c: c.pop("prompt_logprobs") and c.pop("logprobs"), "neither prompt_logprobs nor logprobs"),
        (lambda c: c["prompt_logprobs"][4]["17"].update(logprob=-0.5), "disagree"),  # lists out of step
    ],
)
def test_malformed_rows_are_refused(body, mutate, message):
    choice = copy.deepcopy(body["choices"][0])
    mutate(choice)
    with pytest.raises(MalformedRowError, match=message):
        parse_choice(choice, IDS[0], N_RESPONSE[0], top_k=2)


def test_echo_lists_checked_for_alignment_and_token_names(body):
    choice = {k: v for k, v in body["choices"][0].items() if k != "prompt_logprobs"}
    shifted = copy.deepcopy(choice)
    shifted["logprobs"]["tokens"][4] = "token_id:99"
    with pytest.raises(MalformedRowError, match="misaligned"):
        parse_choice(shifted, IDS[0], 2, top_k=0)
    short = copy.deepcopy(choice)
    del short["logprobs"]["token_logprobs"][-3:]
    with pytest.raises(MalformedRowError, match="4 entries for a 6-token sequence"):
        parse_choice(short, IDS[0], 2, top_k=0)
    # Without return_tokens_as_token_ids the names are texts: log-probs still parse, top-k cannot be mapped.
    texts = copy.deepcopy(choice)
    texts["logprobs"]["tokens"] = ["1", "+", "1", "=", "2", "<|im_end|>", "\n"]
    texts["logprobs"]["top_logprobs"][5] = {"<|im_end|>": -2.25, "\n": -0.375, ".": -1.5}
    assert parse_choice(texts, IDS[0], 2, top_k=0).logp_T == WANT_LOGP[0]
    with pytest.raises(MalformedRowError, match="return_tokens_as_token_ids"):
        parse_choice(texts, IDS[0], 2, top_k=2)


@pytest.mark.parametrize(
    "bad", [{"choices": []}, {"error": "x"}, [], {"choices": [{"index": 0}, {"index": 0}]}, {"choices": "x"}]
)
def test_unmatchable_responses_are_refused(bad):
    with pytest.raises(MalformedResponseError):
        choices_by_index(bad, 2)
