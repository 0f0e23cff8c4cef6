"""The papers' evaluation sets as ``Example`` rows: one adapter per file, chosen by name (``BENCHMARKS``).

Names (``load_benchmark("<name>[:<split>]")``, default split ``test``):

| name | file under the benchmarks folder | verifier | gold answer |
|---|---|---|---|
| ``aime24``, ``aime25`` | ``math/<name>/test.jsonl`` | math | ``answer``, ``"025"`` -> ``"25"`` |
| ``amc23`` | ``math/amc23/test.jsonl`` | math | float ``answer``, ``27.0`` -> ``"27"`` |
| ``math500`` | ``math/math500/test.jsonl`` | math | ``answer`` (LaTeX) |
| ``minerva_math`` | ``math/minerva_math/test.jsonl`` | math | the one ``\\boxed{}`` in ``solution`` |
| ``olympiadbench`` | ``math/olympiadbench/test.jsonl`` | math | ``final_answer[0]`` without ``$`` (1) |
| ``gsm8k`` | ``math/gsm8k/test.jsonl`` | math | after the last ``####``, commas removed |
| ``sciknoweval/<domain>`` (2) | ``sciknoweval/<domain>/<split>.json`` | mcq | ``answer`` letter |
| ``tooluse`` | ``tooluse/test.json`` | toolcall | ``answer``, a JSON list of calls |
| ``tooluse:train`` (3) | ``tooluse/train.json`` or ``tooluse:train@<path>`` | toolcall | as ``tooluse`` |

(1) its one ``error`` tolerance becomes ``extra["verifier_options"] = {"abs_tol": 0.1}``.
(2) domains ``biology``, ``chemistry``, ``material``, ``physics``; splits ``train`` and ``test``.
(3) a split the user brings: the 4,046-row ToolAlpaca training file of lasgroup/SDPO
    (``datasets/tooluse/train.json``, the same JSON Lines format as the test file) is not in the benchmarks
    folder. Put it at ``tooluse/train.json`` there, or name it:
    ``load_benchmark("tooluse:train@/data/train.json")`` (in a training config
    ``data.train: tooluse:train@/data/train.json``).

Prompts, as the papers build them:

- math: one user message, ``MATH_TEMPLATE`` = problem + "\\n\\nPlease reason step by step, and put your final
  answer within \\boxed{}." This is lasgroup/SDPO's ``data/format/prompts.py`` and the Qwen2.5-Math /
  DeepSeek-R1 convention SCOPE's students were trained with (SCOPE's own inference script sends the bare
  question); pass ``math_template=`` to change it (``{problem}`` marks the problem).
- SciKnowEval: the file's ``system`` text as the system message and its ``prompt`` (question, blank line, one
  ``A: ...`` line per option, "Please reason step by step.") as the user message (docs/algorithms.md §9.2).
- tool use: the file's ``prompt`` (tool documentation, ReAct format, question) as the single user message.

The folder is ``$OPDKIT_BENCHMARKS`` when set, else ``<repo>/../shared/data/benchmarks`` (or the same path
relative to the working directory). The files are never copied into the project.

Example::

    examples = load_benchmark("math500")
    examples = load_benchmark("sciknoweval/chemistry:train")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opdkit.core.latex import last_boxed
from opdkit.core.registry import Registry, UnknownNameError
from opdkit.data.example import Example, FieldError
from opdkit.data.readers import parse_rows, read_rows

MATH_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
ENV_VAR = "OPDKIT_BENCHMARKS"


@dataclass(frozen=True)
class RowContext:
    """What an adapter needs besides the record: the benchmark's data source, the split, the math template."""

    data_source: str
    split: str
    math_template: str = MATH_TEMPLATE


Adapter = Callable[[dict, int, RowContext], Example]


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set: its files per split (relative to the benchmarks folder), verifier and adapter.

    rows: the documented row count per split (the folder's README), checked by the real-data tests.
    user_files: splits the folder does not ship and users bring: where the loader looks for them inside the
      folder (or pass a path: ``name:split@path``), and the documented row count in ``rows``.
    """

    name: str
    files: dict[str, str]
    verifier: str
    adapter: Adapter
    rows: dict[str, int] = field(default_factory=dict)
    user_files: dict[str, str] = field(default_factory=dict)

    def path(self, split: str, root: Path) -> Path:
        where = self.files.get(split) or self.user_files.get(split)
        if where is None:
            splits = ", ".join([*self.files, *self.user_files])
            raise UnknownNameError(f"benchmark {self.name!r} has no split {split!r}; splits: {splits}")
        return root / where


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


# --------------------------------------------------------------------------------------------- field helpers


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise FieldError(key, f"expected a non-empty string, got {value!r}"[:200])
    return value


def _row_id(record: dict, key: str) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise FieldError(key, f"expected an id (integer or string), got {value!r}"[:200])
    return str(value)


def _math_example(ctx: RowContext, row_id: str, problem: str, gold: str, extra: dict[str, Any]) -> Example:
    return Example(
        problem_id=f"{ctx.data_source}/{row_id}",
        prompt=[{"role": "user", "content": ctx.math_template.replace("{problem}", problem)}],
        ground_truth=gold,
        verifier="math",
        data_source=ctx.data_source,
        extra=extra,
    )


# --------------------------------------------------------------------------------------------- adapters


def aime_row(record: dict, index: int, ctx: RowContext) -> Example:
    """AIME 2024/2025: ``problem``, string ``answer`` (integers 0-999; ``"025"`` is compared as 25)."""
    answer = _text(record, "answer").strip()
    gold = str(int(answer)) if answer.isdigit() else answer
    extra = {"answer_original": answer, "url": record.get("url")}
    return _math_example(ctx, _row_id(record, "id"), _text(record, "problem"), gold, extra)


def amc_row(record: dict, index: int, ctx: RowContext) -> Example:
    """AMC 2023: ``problem``, float ``answer`` (``27.0`` -> ``"27"``, ``-1.0`` -> ``"-1"``)."""
    answer = record.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        raise FieldError("answer", f"expected a number, got {answer!r}")
    gold = str(int(answer)) if float(answer).is_integer() else repr(float(answer))
    return _math_example(
        ctx, _row_id(record, "id"), _text(record, "problem"), gold, {"url": record.get("url")}
    )


def math500_row(record: dict, index: int, ctx: RowContext) -> Example:
    """MATH500: ``problem``, LaTeX ``answer``; id ``unique_id`` (``test/precalculus/807.json``)."""
    extra = {"subject": record.get("subject"), "level": record.get("level")}
    row_id = _row_id(record, "unique_id")
    return _math_example(ctx, row_id, _text(record, "problem"), _text(record, "answer").strip(), extra)


def minerva_row(record: dict, index: int, ctx: RowContext) -> Example:
    """Minerva math: no answer field; the gold is the single ``\\boxed{...}`` in ``solution``."""
    gold = last_boxed(_text(record, "solution"))
    if gold is None or not gold.strip():
        raise FieldError("solution", "holds no complete \\boxed{...} answer")
    extra = {"type": record.get("type")}
    return _math_example(ctx, _row_id(record, "idx"), _text(record, "problem"), gold.strip(), extra)


def gsm8k_row(record: dict, index: int, ctx: RowContext) -> Example:
    """GSM8K: ``question``; the gold is the text after the last ``#### `` of ``answer``, commas removed."""
    rationale = _text(record, "answer")
    if "####" not in rationale:
        raise FieldError("answer", "has no '#### <answer>' line")
    gold = rationale.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise FieldError("answer", "the text after '####' is empty")
    return _math_example(ctx, _row_id(record, "idx"), _text(record, "question"), gold, {})


def _first_final_answer(value: Any) -> str:
    if isinstance(value, str):  # pandas/parquet pipelines may stringify the list: parse it defensively
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [value]
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise FieldError("final_answer", f"expected a list holding one answer string, got {value!r}"[:200])
    return value[0]


def olympiadbench_row(record: dict, index: int, ctx: RowContext) -> Example:
    """OlympiadBench: ``question`` (+ ``context``), gold ``final_answer[0]`` with every ``$`` removed.

    A row with ``error`` (a numeric tolerance) stores it as ``verifier_options = {"abs_tol": ...}``.
    """
    gold = _first_final_answer(record.get("final_answer")).replace("$", "").strip().rstrip(".").strip()
    if not gold:
        raise FieldError("final_answer", "is empty")
    question = _text(record, "question")
    context = record.get("context")
    problem = f"{context}\n\n{question}" if isinstance(context, str) and context.strip() else question
    keep = ("subfield", "answer_type", "unit", "is_multiple_answer")
    extra: dict[str, Any] = {k: record.get(k) for k in keep}
    if record.get("error"):
        try:
            extra["verifier_options"] = {"abs_tol": float(record["error"])}
        except (TypeError, ValueError):
            raise FieldError("error", f"expected a numeric tolerance, got {record['error']!r}") from None
    return _math_example(ctx, _row_id(record, "id"), problem, gold, extra)


_OPTION_LETTER = re.compile(r"[A-Z]")


def sciknoweval_row(record: dict, index: int, ctx: RowContext) -> Example:
    """SciKnowEval L3 MCQ: ``system`` + ``prompt`` as chat messages; gold ``answer`` letter (§9.2)."""
    answer = _text(record, "answer").strip()
    if not _OPTION_LETTER.fullmatch(answer):
        raise FieldError("answer", f"expected one option letter A-Z, got {answer!r}")
    return Example(
        problem_id=f"{ctx.data_source}/{ctx.split}/{_row_id(record, 'idx')}",
        prompt=[
            {"role": "system", "content": _text(record, "system")},
            {"role": "user", "content": _text(record, "prompt")},
        ],
        ground_truth=answer,
        verifier="mcq",
        data_source=ctx.data_source,
        extra={"split": ctx.split},
    )


def tooluse_row(record: dict, index: int, ctx: RowContext) -> Example:
    """ToolAlpaca: ``prompt`` as the single user message; gold ``answer``, a JSON list of calls (§9.3)."""
    answer = _text(record, "answer")
    try:
        calls = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise FieldError("answer", f"not JSON: {exc.msg}") from None
    if not isinstance(calls, list) or not all(isinstance(c, dict) and "Action" in c for c in calls):
        raise FieldError("answer", "expected a JSON list of {'Action', 'Action_Input'} objects")
    return Example(
        problem_id=f"{ctx.data_source}/{_row_id(record, 'idx')}",
        prompt=[{"role": "user", "content": _text(record, "prompt")}],
        ground_truth=answer,
        verifier="toolcall",
        data_source=ctx.data_source,
        extra={"n_calls": len(calls)},
    )


# --------------------------------------------------------------------------------------------- registry

_MATH_FILES = {
    "aime24": (aime_row, 30),
    "aime25": (aime_row, 30),
    "amc23": (amc_row, 40),
    "math500": (math500_row, 500),
    "minerva_math": (minerva_row, 272),
    "olympiadbench": (olympiadbench_row, 675),
    "gsm8k": (gsm8k_row, 1319),
}
for _name, (_adapter, _rows) in _MATH_FILES.items():
    BENCHMARKS.add(
        _name, Benchmark(_name, {"test": f"math/{_name}/test.jsonl"}, "math", _adapter, {"test": _rows})
    )

_SCIKNOWEVAL_ROWS = {
    "biology": (450, 50),
    "chemistry": (1890, 210),
    "material": (841, 94),
    "physics": (720, 80),
}
for _domain, (_train, _test) in _SCIKNOWEVAL_ROWS.items():
    _name = f"sciknoweval/{_domain}"
    _files = {split: f"sciknoweval/{_domain}/{split}.json" for split in ("train", "test")}
    BENCHMARKS.add(_name, Benchmark(_name, _files, "mcq", sciknoweval_row, {"train": _train, "test": _test}))

BENCHMARKS.add(
    "tooluse",
    Benchmark(
        "tooluse", {"test": "tooluse/test.json"}, "toolcall", tooluse_row, {"test": 68, "train": 4046},
        user_files={"train": "tooluse/train.json"},
    ),
)  # fmt: skip


# --------------------------------------------------------------------------------------------- loading


def _candidate_dirs() -> list[Path]:
    repo = Path(__file__).resolve().parents[3]  # <repo>/src/opdkit/data/benchmarks.py
    return [
        repo.parent / "shared" / "data" / "benchmarks",
        Path.cwd().parent / "shared" / "data" / "benchmarks",
    ]


def find_benchmarks_dir() -> Path | None:
    """The benchmarks folder, or None when it is not there (tests skip; the CLI explains)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    return next((d for d in _candidate_dirs() if d.is_dir()), None)


def benchmarks_dir() -> Path:
    """The benchmarks folder: ``$OPDKIT_BENCHMARKS``, else ``<repo>/../shared/data/benchmarks``."""
    found = find_benchmarks_dir()
    if found is None:
        env = os.environ.get(ENV_VAR)
        tried = [env] if env else [str(d) for d in _candidate_dirs()]
        raise FileNotFoundError(f"benchmark folder not found (tried {', '.join(tried)}); set {ENV_VAR}")
    return found


def parse_spec(spec: str) -> tuple[Benchmark, str]:
    """``"name[:split][@path]"`` -> (benchmark, split); unknown names and splits list the valid ones."""
    name, _, split = spec.partition("@")[0].partition(":")
    benchmark = BENCHMARKS.get(name)
    split = split or ("test" if "test" in benchmark.files else next(iter(benchmark.files)))
    benchmark.path(split, Path())  # checks the split
    return benchmark, split


def training_spec(spec: str) -> str:
    """The data spec to *train* on: a benchmark named without a split means its ``train`` split; one that has
    no train split is refused unless its split is named (``math500:test``), so an evaluation set is never
    trained on by accident. Anything else (a file, ``task``, a spec with a split) is returned as it is."""
    name, _, split = spec.partition(":")
    if split or name not in BENCHMARKS:
        return spec
    files = BENCHMARKS.get(name).files
    if "train" in files:
        return f"{name}:train"
    first = next(iter(files))
    raise ValueError(
        f"benchmark {name!r} has no train split (splits: {', '.join(files)}); to train on it anyway, name "
        f"the split: data.train={name}:{first}"
    )


def load_benchmark(
    spec: str, *, root: str | Path | None = None, math_template: str = MATH_TEMPLATE
) -> list[Example]:
    """Read and check one benchmark file (``"math500"``, ``"sciknoweval/chemistry:train"``, ...).

    root: the benchmarks folder (default ``benchmarks_dir()``). math_template: the math user message with
    ``{problem}`` where the problem goes. A ``DataError`` names the file, line and field of every bad row.
    ``"name:split@path"`` reads the split from ``path`` (a split users bring, e.g. ``tooluse:train``).
    """
    if "{problem}" not in math_template:
        raise ValueError("math_template must contain '{problem}'")
    benchmark, split = parse_spec(spec)
    path = _split_path(benchmark, split, spec.partition("@")[2], root)
    ctx = RowContext(data_source=benchmark.name, split=split, math_template=math_template)
    rows = read_rows(path)
    return parse_rows(rows, str(path), lambda record, index: benchmark.adapter(record, index, ctx))


def _split_path(benchmark: Benchmark, split: str, given: str, root: str | Path | None) -> Path:
    """The file of ``split``: the path given after ``@``, else its place in the benchmarks folder."""
    if given:
        if not Path(given).is_file():
            raise FileNotFoundError(f"{benchmark.name}:{split}: no file at {given}")
        return Path(given)
    if split not in benchmark.user_files:
        return benchmark.path(split, Path(root) if root is not None else benchmarks_dir())
    folder = Path(root) if root is not None else find_benchmarks_dir()
    path = benchmark.path(split, folder) if folder is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{benchmark.name}:{split} is not shipped with the benchmarks ({benchmark.rows.get(split, '?')} "
            f"rows, user-supplied): put it at <benchmarks>/{benchmark.user_files[split]} or pass its path as "
            f"'{benchmark.name}:{split}@/path/to/file'"
        )
    return path
