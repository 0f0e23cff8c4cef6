"""Benchmark adapters on small files written in the shapes (and quirks) of the real benchmark files."""

import json

import pytest

from opdkit.core.registry import UnknownNameError
from opdkit.data import (
    BENCHMARKS,
    MATH_TEMPLATE,
    DataError,
    benchmarks_dir,
    find_benchmarks_dir,
    load_benchmark,
)
from opdkit.data.benchmarks import ENV_VAR, parse_spec

SYSTEM = "\nGiven a question and four options, please select the right answer. ...\n"
TOOL_GOLD = json.dumps(
    [
        {"Action": "searchAxolotlImages", "Action_Input": json.dumps({"color": "wild", "page": 1})},
        {"Action": "getAxolotlFacts", "Action_Input": "{}"},
    ]
)

FILES = {
    "math/aime24/test.jsonl": [
        {
            "id": 60,
            "problem": "Find x.",
            "solution": "...",
            "answer": "025",
            "url": "u",
            "question": "Find x.",
        }
    ],
    "math/aime25/test.jsonl": [
        {"id": 90, "problem": "Find b.", "solution": "70", "answer": "70", "url": "u"}
    ],
    "math/amc23/test.jsonl": [
        {"id": 0, "problem": "How far?", "answer": 27.0, "url": "u"},
        {"id": 1, "problem": "Which?", "answer": -1.0, "url": "u"},
        {"id": 2, "problem": "Ratio?", "answer": 0.25, "url": "u"},
    ],
    "math/gsm8k/test.jsonl": [{"question": "Eggs?", "answer": "16-3=<<16-3=13>>13\n#### 2,125", "idx": 0}],
    "math/math500/test.jsonl": [
        {
            "problem": "Convert $(0,3)$.",
            "solution": "...",
            "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
            "subject": "Precalculus",
            "level": 2,
            "unique_id": "test/precalculus/807.json",
        }
    ],
    "math/minerva_math/test.jsonl": [
        {
            "problem": "How small?",
            "solution": "So it is \\boxed{1.6} \\mathrm{~cm}.",
            "type": "Astronomy",
            "idx": 0,
        }
    ],
    "math/olympiadbench/test.jsonl": [
        {
            "id": 1606,
            "question": "Who wins?",
            "final_answer": ["$\\frac{1}{2 n+2}$"],
            "context": None,
            "error": None,
        },
        {"id": 1607, "question": "All pairs?", "final_answer": ["$69$,$84$"], "is_multiple_answer": True},
        {
            "id": 1608,
            "question": "Rate?",
            "final_answer": ["4.2"],
            "unit": "%",
            "error": "1e-1",
            "context": "Ctx.",
        },
        {"id": 1609, "question": "Stringified?", "final_answer": '["$3$"]'},
    ],
    "tooluse/test.json": [
        {"prompt": "Tools ...\nQuestion: a wild axolotl?", "idx": 4046, "system": None, "answer": TOOL_GOLD}
    ],
}
for _domain in ("biology", "chemistry", "material", "physics"):
    for _split, _idx in (("train", 1), ("test", 2)):
        FILES[f"sciknoweval/{_domain}/{_split}.json"] = [
            {
                "idx": _idx,
                "answer": "B",
                "prompt": "Q?\n\nA: 1\nB: 2\nPlease reason step by step.",
                "system": SYSTEM,
            }
        ]


@pytest.fixture
def root(tmp_path):
    for rel, rows in FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


def golds(spec, root):
    return [e.ground_truth for e in load_benchmark(spec, root=root)]


def test_every_registered_benchmark_has_a_fixture_and_loads(root):
    names = BENCHMARKS.names()
    assert len(names) == 12
    for name in names:
        for split in BENCHMARKS.get(name).files:
            examples = load_benchmark(f"{name}:{split}", root=root)
            assert examples and all(e.verifier == BENCHMARKS.get(name).verifier for e in examples)
            assert all(e.data_source == name for e in examples)


def test_math_golds_and_prompts(root):
    assert golds("aime24", root) == ["25"]  # leading zeros dropped
    assert golds("amc23", root) == ["27", "-1", "0.25"]  # floats
    assert golds("gsm8k", root) == ["2125"]  # after '####', thousands separator removed
    assert golds("minerva_math", root) == ["1.6"]  # the box in the solution; the unit stays outside
    (example,) = load_benchmark("math500", root=root)
    assert example.problem_id == "math500/test/precalculus/807.json"
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert example.prompt == [{"role": "user", "content": f"Convert $(0,3)$.\n\n{instruction}"}]
    assert example.extra == {"subject": "Precalculus", "level": 2}


def test_olympiadbench_dollars_lists_context_and_tolerance(root):
    rows = load_benchmark("olympiadbench", root=root)
    assert [e.ground_truth for e in rows] == ["\\frac{1}{2 n+2}", "69,84", "4.2", "3"]
    assert rows[2].verifier_options == {"abs_tol": 0.1}
    assert rows[0].verifier_options == {}
    assert rows[2].user_text.startswith("Ctx.\n\nRate?")
    assert rows[2].extra["unit"] == "%"


def test_sciknoweval_and_tooluse_prompts(root):
    (sci,) = load_benchmark("sciknoweval/chemistry:train", root=root)
    assert sci.problem_id == "sciknoweval/chemistry/train/1"
    assert sci.prompt == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Q?\n\nA: 1\nB: 2\nPlease reason step by step."},
    ]
    assert (sci.ground_truth, sci.verifier) == ("B", "mcq")
    (tool,) = load_benchmark("tooluse", root=root)
    assert tool.prompt == [{"role": "user", "content": "Tools ...\nQuestion: a wild axolotl?"}]
    assert (tool.problem_id, tool.ground_truth, tool.extra) == ("tooluse/4046", TOOL_GOLD, {"n_calls": 2})


def test_math_template_can_be_changed(root):
    (example,) = load_benchmark(
        "aime25", root=root, math_template="{problem} Put your final answer within \\boxed{}."
    )
    assert example.user_text == "Find b. Put your final answer within \\boxed{}."
    assert MATH_TEMPLATE.startswith("{problem}\n\n")
    with pytest.raises(ValueError, match="must contain"):
        load_benchmark("aime25", root=root, math_template="no placeholder")


def test_spec_names_and_splits():
    assert parse_spec("math500")[1] == "test"
    assert parse_spec("sciknoweval/physics:train")[1] == "train"
    with pytest.raises(UnknownNameError, match="valid benchmarks: aime24, aime25, amc23, gsm8k, math500"):
        parse_spec("math-500")
    # tooluse's train split is user-supplied (tests/data/test_tooluse_train.py); 'dev' exists nowhere
    with pytest.raises(UnknownNameError, match="benchmark 'tooluse' has no split 'dev'; splits: test, train"):
        parse_spec("tooluse:dev")


def test_bad_rows_name_file_line_and_field(root):
    path = root / "math/minerva_math/test.jsonl"
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"problem": "p", "solution": "no box here", "idx": 1}) + "\n")
        f.write(json.dumps({"problem": "", "solution": "\\boxed{2}", "idx": 2}) + "\n")
    with pytest.raises(DataError) as info:
        load_benchmark("minerva_math", root=root)
    assert [str(i) for i in info.value.issues] == [
        f"{path}, line 2, field 'solution': holds no complete \\boxed{{...}} answer",
        f"{path}, line 3, field 'problem': expected a non-empty string, got ''",
    ]
    tool = root / "tooluse/test.json"
    tool.write_text(
        json.dumps({"prompt": "p", "idx": 1, "answer": '{"Action": "x"}'}) + "\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"line 1, field 'answer': expected a JSON list"):
        load_benchmark("tooluse", root=root)
    sci = root / "sciknoweval/physics/test.json"
    sci.write_text(
        json.dumps({"prompt": "p", "idx": 1, "answer": "AB", "system": "s"}) + "\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"field 'answer': expected one option letter A-Z, got 'AB'"):
        load_benchmark("sciknoweval/physics", root=root)


def test_benchmarks_dir_from_the_environment(root, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(root))
    assert benchmarks_dir() == root == find_benchmarks_dir()
    assert golds("aime24", None) == ["25"]  # root=None reads the folder named by the variable
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    assert find_benchmarks_dir() is None
    with pytest.raises(FileNotFoundError, match=f"tried {tmp_path / 'nowhere'}.*set {ENV_VAR}"):
        benchmarks_dir()


def test_training_spec_defaults_to_the_train_split_and_refuses_an_eval_only_benchmark():
    from opdkit.data.benchmarks import training_spec

    assert training_spec("sciknoweval/chemistry") == "sciknoweval/chemistry:train"  # not the default test
    assert training_spec("sciknoweval/chemistry:test") == "sciknoweval/chemistry:test"  # asked for by name
    assert training_spec("math500:test") == "math500:test"
    assert training_spec("task") == "task" and training_spec("data/train.jsonl") == "data/train.jsonl"
    with pytest.raises(ValueError, match=r"'math500' has no train split.*data.train=math500:test"):
        training_spec("math500")


def test_training_on_a_bare_benchmark_name_reads_its_train_split(root, monkeypatch):
    from opdkit.train.config import load_config
    from opdkit.train.setup import load_data

    monkeypatch.setenv("OPDKIT_BENCHMARKS", str(root))
    cfg = load_config(None, ["data.train=sciknoweval/chemistry", "data.eval=sciknoweval/chemistry"])
    tok = _char_tokenizer()
    data = load_data(cfg, tok, {})
    assert [e.problem_id for e in data.train] == ["sciknoweval/chemistry/train/1"]
    assert [e.problem_id for e in data.eval] == ["sciknoweval/chemistry/test/2"]  # evaluation: the test split


def _char_tokenizer():
    from opdkit.models import build_char_tokenizer

    return build_char_tokenizer()
