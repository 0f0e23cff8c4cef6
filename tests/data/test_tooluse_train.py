"""``tooluse:train``: the ToolAlpaca training split users bring (4,046 rows in lasgroup/SDPO, not shipped
with the benchmarks), read from a given path or from ``<benchmarks>/tooluse/train.json``, in the test file's
format (JSON Lines: ``prompt``, ``description``, ``idx``, ``dataset``, ``system``, ``answer``, ``tests``,
``kind``, ``elo``; the answer a JSON string of ``{"Action", "Action_Input"}`` calls)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opdkit.data import find_benchmarks_dir, load_benchmark
from opdkit.eval.datasets import resolve_examples
from opdkit.rewards import make_verifier

PROMPT = (
    "Your task is to answer the user's question using available tools. \nYou have access to the following "
    "tools:\nName: Axolotl\nDescription: Collection of axolotl pictures and facts\nDocumentation:\n"
    "getRandomAxolotlImage: Retrieve a random axolotl image.\nParameters: {}\n\nQuestion: {question}"
)
CALLS = [
    [{"Action": "getRandomAxolotlImage", "Action_Input": "{}"}],
    [{"Action": "searchAxolotlImages", "Action_Input": json.dumps({"color": "wild", "page": 2})},
     {"Action": "getAxolotlFacts", "Action_Input": json.dumps({"category": "habits", "limit": 3})}],
    [{"Action": "getUserProfile", "Action_Input": json.dumps({"userId": "u1"})},
     {"Action": "[Optional]updateUserProfile", "Action_Input": json.dumps({"userId": "u1", "bio": "hi"})}],
]  # fmt: skip


def _write_train(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for idx, calls in enumerate(CALLS):
        prompt = PROMPT.replace("{question}", f"question {idx}?")
        rows.append({"prompt": prompt, "description": prompt, "idx": idx, "dataset": "tooluse",
                     "system": None, "answer": json.dumps(calls), "tests": None, "kind": "tooluse",
                     "elo": 1500})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_train_split_from_a_given_path(tmp_path):
    path = _write_train(tmp_path / "my_toolalpaca_train.jsonl")
    examples = load_benchmark(f"tooluse:train@{path}")
    assert [e.problem_id for e in examples] == ["tooluse/0", "tooluse/1", "tooluse/2"]
    assert [e.extra["n_calls"] for e in examples] == [1, 2, 2]
    assert all(e.verifier == "toolcall" and len(e.prompt) == 1 for e in examples)
    assert examples[1].user_text.endswith("Question: question 1?")
    # each row's gold calls, written as a ReAct completion, score 1 with the row's own verifier
    for e, calls in zip(examples, CALLS):
        text = "\n".join(f"Action: {c['Action']}\nAction Input: {c['Action_Input']}" for c in calls)
        assert make_verifier(e.verifier)(text, e.ground_truth).correct
    # the data spec a training config uses goes through the same loader
    assert [e.problem_id for e in resolve_examples(f"tooluse:train@{path}", "train")] == [
        e.problem_id for e in examples
    ]


def test_train_split_from_the_benchmarks_folder(tmp_path):
    _write_train(tmp_path / "tooluse" / "train.json")
    assert len(load_benchmark("tooluse:train", root=tmp_path)) == 3


def test_a_missing_train_file_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tooluse:train is not shipped .*4046 rows.*tooluse:train@"):
        load_benchmark("tooluse:train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_benchmark(f"tooluse:train@{tmp_path / 'nope.json'}")


ROOT = find_benchmarks_dir()
HAS_TRAIN = ROOT is not None and (ROOT / "tooluse" / "train.json").is_file()


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_TRAIN, reason="no tooluse/train.json in the benchmarks folder (user-supplied)")
def test_real_train_file_has_the_documented_rows():
    examples = load_benchmark("tooluse:train")
    assert len(examples) == 4046
    assert all(e.verifier == "toolcall" for e in examples)
