"""The real benchmark files load completely, with the row counts their README documents.

Needs ``../shared/data/benchmarks`` (or ``$OPDKIT_BENCHMARKS``); skipped when absent.
"""

import pytest

from opdkit.data import BENCHMARKS, find_benchmarks_dir, load_benchmark

ROOT = find_benchmarks_dir()
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(ROOT is None, reason="../shared/data/benchmarks is not present"),
]
SPECS = [(name, split) for name in BENCHMARKS.names() for split in BENCHMARKS.get(name).files]


def test_all_sixteen_files_are_registered():
    assert len(SPECS) == 16
    assert (
        sum(BENCHMARKS.get(n).rows[s] for n, s in SPECS) == 30 + 30 + 40 + 1319 + 500 + 272 + 675 + 4335 + 68
    )


@pytest.mark.parametrize(("name", "split"), SPECS)
def test_file_loads_with_the_documented_row_count(name, split):
    benchmark = BENCHMARKS.get(name)
    examples = load_benchmark(f"{name}:{split}")
    assert len(examples) == benchmark.rows[split]
    assert len({e.problem_id for e in examples}) == len(examples)  # ids are unique (the loader checks it too)
    assert all(e.verifier == benchmark.verifier and e.ground_truth.strip() for e in examples)
    roles = {tuple(m["role"] for m in e.prompt) for e in examples}
    assert roles == ({("system", "user")} if name.startswith("sciknoweval/") else {("user",)})


def test_first_rows_match_the_readme():
    assert load_benchmark("aime24")[0].ground_truth == "204"
    assert load_benchmark("aime25")[0].ground_truth == "70"
    assert load_benchmark("amc23")[0].ground_truth == "27"
    assert load_benchmark("gsm8k")[0].ground_truth == "18"
    assert load_benchmark("math500")[0].ground_truth == r"\left( 3, \frac{\pi}{2} \right)"
    assert load_benchmark("minerva_math")[0].ground_truth == "1.6"
    assert load_benchmark("olympiadbench")[0].ground_truth == "2"
    bio = load_benchmark("sciknoweval/biology:test")[0]
    assert (bio.problem_id, bio.ground_truth) == ("sciknoweval/biology/test/473", "B")
    assert bio.user_text.endswith("D: 0.45\nPlease reason step by step.")
    tool = load_benchmark("tooluse")[0]
    assert tool.ground_truth == '[{"Action": "getRandomAxolotlImage", "Action_Input": "{}"}]'
    assert tool.user_text.endswith("Question: Hey, can you show me a random picture of an axolotl?")


def test_readme_quirks():
    aime24 = load_benchmark("aime24")
    assert sum(e.extra["answer_original"].startswith("0") for e in aime24) == 7  # "025", "073", ...
    gsm8k = load_benchmark("gsm8k")
    assert all("," not in e.ground_truth for e in gsm8k)
    olympiad = load_benchmark("olympiadbench")
    assert all("$" not in e.ground_truth for e in olympiad)
    assert [e.verifier_options for e in olympiad if e.verifier_options] == [{"abs_tol": 0.1}]
    assert sum(bool(e.extra["is_multiple_answer"]) for e in olympiad) == 94
    assert sum(e.extra["unit"] is not None for e in olympiad) == 8
    bio = load_benchmark("sciknoweval/biology:train") + load_benchmark("sciknoweval/biology:test")
    assert {e.ground_truth for e in bio} <= {"A", "B", "C", "D"}
