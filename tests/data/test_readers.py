"""Dataset files (JSON Lines, JSON, parquet; verl and TRL schemas) read into Example rows, and bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opdkit.core.registry import UnknownNameError
from opdkit.data import DataError, Example, examples_from_records, load_examples, read_rows

SYSTEM = {"role": "system", "content": "Answer in <answer> tags."}


def write_jsonl(path, rows, *, blank_line_at=None):
    lines = [json.dumps(r) for r in rows]
    if blank_line_at is not None:
        lines.insert(blank_line_at, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def verl_rows():
    return [
        {
            "data_source": "math500",
            "prompt": [{"role": "user", "content": "What is 1+1?"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": "2"},
            "extra_info": {"index": 7, "split": "test"},
        },
        {
            "data_source": "sciknoweval",
            "prompt": [SYSTEM, {"role": "user", "content": "Pick one.\n\nA: x\nB: y"}],
            "ability": "science",
            "reward_model": {"style": "rule", "ground_truth": "B"},
            "extra_info": {"index": 8, "split": "test"},
        },
    ]


def test_verl_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows()), path)
    first, second = load_examples(path)
    assert first == Example(
        problem_id="math500/7",
        prompt=[{"role": "user", "content": "What is 1+1?"}],
        ground_truth="2",
        verifier="math",  # implied by the data source
        data_source="math500",
        extra={"ability": "math", "index": 7, "split": "test"},
    )
    assert (second.verifier, second.prompt[0], second.user_text) == ("mcq", SYSTEM, "Pick one.\n\nA: x\nB: y")


def test_verl_jsonl_with_numeric_and_list_golds(tmp_path):
    rows = verl_rows()
    rows[0]["reward_model"]["ground_truth"] = 27.0  # AMC-style float gold
    rows[1]["reward_model"]["ground_truth"] = ["$\\frac{1}{2}$"]  # OlympiadBench-style one-item list
    rows[1]["data_source"] = "olympiadbench"
    examples = load_examples(write_jsonl(tmp_path / "v.jsonl", rows))
    assert [e.ground_truth for e in examples] == ["27", "$\\frac{1}{2}$"]


def test_trl_jsonl_every_prompt_form(tmp_path):
    rows = [
        {"prompt": "What is 2+2?", "solution": "4", "id": "q-1", "level": 3},
        {"prompt": [SYSTEM, {"role": "user", "content": "Pick"}], "answer": "A", "verifier": "mcq"},
        {
            "messages": [{"role": "user", "content": "Sum?"}, {"role": "assistant", "content": "It is 5."}],
            "ground_truth": 5,
            "privileged_context": "The sum of 2 and 3.",
        },
    ]
    path = write_jsonl(tmp_path / "gsm8k.jsonl", rows, blank_line_at=1)  # blank lines are skipped
    first, second, third = load_examples(path)
    # No data_source column: the file stem names the source, and "gsm8k" implies the math verifier.
    assert (first.problem_id, first.data_source, first.verifier, first.extra) == (
        "q-1",
        "gsm8k",
        "math",
        {"level": 3},
    )
    assert first.prompt == [{"role": "user", "content": "What is 2+2?"}]
    assert (second.problem_id, second.verifier, second.ground_truth) == ("gsm8k/1", "mcq", "A")
    assert third.prompt == [{"role": "user", "content": "Sum?"}]  # the assistant's answer is not prompt
    assert (third.ground_truth, third.privileged_context) == ("5", "The sum of 2 and 3.")


def test_json_array_and_json_lines_behind_a_json_suffix(tmp_path):
    rows = [{"prompt": "p1", "solution": "1"}, {"prompt": "p2", "solution": "2"}]
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    lines = write_jsonl(tmp_path / "lines.json", rows)  # SDPO's .json files are JSON Lines
    for path in (array, lines):
        examples = load_examples(path, verifier="math", data_source="toy")
        assert [(e.problem_id, e.ground_truth) for e in examples] == [("toy/0", "1"), ("toy/1", "2")]


def test_trl_parquet_and_explicit_schema(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "p", "solution": "B", "data_source": "sciknoweval/physics"}]), path
    )
    (example,) = load_examples(path, schema="trl")
    assert (example.verifier, example.data_source) == ("mcq", "sciknoweval/physics")
    with pytest.raises(UnknownNameError, match="valid schemas: trl, verl"):
        load_examples(path, schema="hf")


def test_records_from_a_task_generator_roundtrip():
    records = [
        {
            "prompt": [{"role": "user", "content": "12+30="}],
            "solution": "42",
            "verifier": "addition",
            "data_source": "addition",
            "privileged_context": "12+30 carries nothing",
        }
    ]
    (example,) = examples_from_records(records)
    assert (example.problem_id, example.verifier, example.privileged_context) == (
        "addition/0",
        "addition",
        "12+30 carries nothing",
    )
    again = examples_from_records([e.to_trl_record() for e in [example]])
    assert again == [example]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_undecodable_rows_are_all_reported_before_any_row_is_read(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [json.dumps({"prompt": "p", "solution": "1"}), "{not json", json.dumps({"prompt": "p"}), "[1, 2]"],
    )
    with pytest.raises(DataError) as info:
        load_examples(path, verifier="math")
    # Line 3 (no gold) is not reported yet: the file must decode completely first.
    assert [str(i) for i in info.value.issues] == [
        f"{path}, line 2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}, line 4: expected a JSON object, got list",
    ]
    assert str(info.value) == "\n".join(str(i) for i in info.value.issues)


def test_every_bad_row_is_reported_with_line_and_field(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"prompt": "p", "solution": "1"}),
            json.dumps({"prompt": "p"}),  # no gold
            json.dumps({"prompt": [{"role": "robot", "content": "hi"}], "solution": "1"}),
            json.dumps({"prompt": [], "solution": "1"}),
        ],
    )
    with pytest.raises(DataError) as info:
        load_examples(path, verifier="math")
    assert [str(i) for i in info.value.issues] == [
        f"{path}, line 2, field 'solution': missing: expected one of solution, ground_truth, answer",
        f"{path}, line 3, field 'prompt[0].role': expected one of system, user, assistant, tool, got 'robot'",
        f"{path}, line 4, field 'prompt': expected a string or a non-empty list of chat messages, got []",
    ]


def test_verl_row_errors_name_the_field(tmp_path):
    rows = verl_rows()
    del rows[0]["reward_model"]
    rows[1]["data_source"] = "my_new_set"  # no verifier implied
    with pytest.raises(DataError) as info:
        load_examples(write_jsonl(tmp_path / "v.jsonl", rows))
    assert [(i.row, i.field) for i in info.value.issues] == [
        (1, "reward_model.ground_truth"),
        (2, "verifier"),
    ]
    assert "no verifier for data source 'my_new_set'" in str(info.value)


def test_duplicate_ids_empty_files_and_unknown_suffixes(tmp_path):
    dup = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "solution": "1", "id": "x"}] * 2)
    with pytest.raises(DataError, match=r"line 2: duplicate problem id 'x' \(also line 1\)"):
        load_examples(dup, verifier="math")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no rows"):
        read_rows(empty)
    with pytest.raises(DataError, match=r"unsupported file type; expected \.jsonl, \.json, \.parquet"):
        read_rows(tmp_path / "data.csv")
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="record 2: expected a dict"):
        examples_from_records([{"prompt": "a", "solution": "1"}, "b"], verifier="math")


def test_json_array_errors_use_item_numbers(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"prompt": "a", "solution": "1"}, {"prompt": "", "solution": None}]))
    with pytest.raises(DataError, match=r"item 2, field 'solution': missing"):
        load_examples(path, verifier="math")
