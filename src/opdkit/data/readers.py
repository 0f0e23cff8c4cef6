"""Read prompt datasets (JSON Lines, JSON, parquet; verl or TRL schema) into ``Example`` rows.

Formats (by suffix): ``.jsonl`` (one object per line), ``.json`` (a JSON array, or JSON Lines despite the
suffix, as SDPO's files are), ``.parquet`` (pyarrow, the ``train`` extra).

Schemas (``schema="auto"`` picks ``verl`` when any row has ``reward_model``, else ``trl``):

- ``verl``: ``data_source`` (str), ``prompt`` (chat messages), ``reward_model.ground_truth``, optional
  ``extra_info`` (dict; ``index`` gives the problem id, ``verifier`` and ``privileged_context`` are honoured).
- ``trl``: ``prompt`` (a string or chat messages) or ``messages`` (a conversation; trailing assistant turns
  are dropped), the gold in ``solution`` / ``ground_truth`` / ``answer`` (first present), optional
  ``privileged_context``, ``verifier``, ``data_source``, ``id`` (the problem id as is; else
  ``<data_source>/<row index>``); other columns and an ``extra_info`` object go to ``extra``.

The verifier is, in order: the ``verifier=`` argument, the row's own, or the one implied by the data source
(``DATA_SOURCE_VERIFIERS``: math sources -> ``math``, ``sciknoweval*`` -> ``mcq``, ``tooluse`` ->
``toolcall``).

The whole file is read and checked before anything is returned: every bad row is reported in one
``DataError`` naming the file, the row (1-based line for JSON Lines) and the field.

Example::

    examples = load_examples("train.parquet")                       # verl schema, auto-detected
    examples = load_examples("tasks.jsonl", schema="trl", verifier="math")
    examples = examples_from_records(generator_records, source="addition")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opdkit.core.registry import Registry
from opdkit.data.example import ROLES, DataError, DataIssue, Example, FieldError

_MATH_SOURCES = (
    "math", "math500", "aime24", "aime25", "amc23", "gsm8k", "minerva_math", "olympiadbench", "dapo_math",
    "math_dapo", "deepmath", "openai/gsm8k", "lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval",
)  # fmt: skip
DATA_SOURCE_VERIFIERS: dict[str, str] = {
    **dict.fromkeys(_MATH_SOURCES, "math"),
    "sciknoweval": "mcq",
    "tooluse": "toolcall",
}
"""Verifier implied by a data source; ``a/b`` falls back to ``a`` (``sciknoweval/chemistry`` -> ``mcq``)."""

GROUND_TRUTH_COLUMNS = ("solution", "ground_truth", "answer")


@dataclass(frozen=True)
class RawRow:
    """One decoded record and where it came from (``number`` is 1-based, ``index`` 0-based)."""

    number: int
    index: int
    record: Any
    label: str = "line"


@dataclass(frozen=True)
class RowDefaults:
    """What the caller fixes for every row.

    data_source: overrides the row's own. verifier: overrides the row's own and the data-source default.
    fallback_source: the data source of TRL rows that name none (the file stem when reading a file).
    """

    data_source: str | None = None
    verifier: str | None = None
    fallback_source: str = "data"


# --------------------------------------------------------------------------------------------- file reading


def _json_lines(text: str, source: str) -> tuple[list[RawRow], list[DataIssue]]:
    rows, issues = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(RawRow(number, len(rows), json.loads(line)))
        except json.JSONDecodeError as exc:
            issues.append(
                DataIssue(source, number, None, f"invalid JSON: {exc.msg} (column {exc.colno})", "line")
            )
    return rows, issues


def _read_json(path: Path, source: str) -> tuple[list[RawRow], list[DataIssue]]:
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):  # JSON Lines despite the .json suffix
        return _json_lines(text, source)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [
            DataIssue(source, exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})", "line")
        ]
    return [RawRow(i + 1, i, item, "item") for i, item in enumerate(items)], []


def _read_parquet(path: Path, source: str) -> tuple[list[RawRow], list[DataIssue]]:
    try:
        import pyarrow.parquet as pq  # the `train` extra; imported here so `import opdkit` stays cheap
    except ImportError:
        raise ImportError("reading parquet needs pyarrow: pip install 'opdkit[train]'") from None
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files; report them as bad data
        return [], [DataIssue(source, None, None, f"unreadable parquet file: {exc}")]
    return [RawRow(i + 1, i, r, "row") for i, r in enumerate(records)], []


_READERS: dict[str, Callable[[Path, str], tuple[list[RawRow], list[DataIssue]]]] = {
    ".jsonl": lambda path, source: _json_lines(path.read_text(encoding="utf-8"), source),
    ".json": _read_json,
    ".parquet": _read_parquet,
}


def read_rows(path: str | Path) -> list[RawRow]:
    """Every record of a ``.jsonl``/``.json``/``.parquet`` file; DataError if the file cannot be decoded."""
    path = Path(path)
    source = str(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            [DataIssue(source, None, None, f"unsupported file type; expected {', '.join(_READERS)}")]
        )
    if not path.is_file():
        raise DataError([DataIssue(source, None, None, "no such file")])
    try:
        rows, issues = reader(path, source)
    except UnicodeDecodeError as exc:
        raise DataError([DataIssue(source, None, None, f"not UTF-8 text: {exc.reason}")]) from None
    issues += [
        DataIssue(source, r.number, None, f"expected a JSON object, got {type(r.record).__name__}", r.label)
        for r in rows
        if not isinstance(r.record, dict)
    ]
    if issues:
        raise DataError(issues)
    if not rows:
        raise DataError([DataIssue(source, None, None, "the file holds no rows")])
    return rows


# --------------------------------------------------------------------------------------------- field parsing


def parse_messages(value: Any, field: str) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user message; a list holds {role, content} dicts."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise FieldError(
            field, f"expected a string or a non-empty list of chat messages, got {value!r}"[:200]
        )
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise FieldError(f"{field}[{i}]", f"expected a {{role, content}} object, got {message!r}"[:200])
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise FieldError(f"{field}[{i}].role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise FieldError(f"{field}[{i}].content", f"expected a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    return messages


def gold_string(value: Any, field: str) -> str:
    """A gold answer as a string: ``27.0`` -> ``"27"``, ``["$x$"]`` -> ``"$x$"``, a list of calls -> JSON."""
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(field, "the gold answer is empty")
        return value
    if isinstance(value, bool) or value is None:
        raise FieldError(field, f"expected a gold answer, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list) and len(value) == 1 and not isinstance(value[0], dict):
        return gold_string(value[0], field)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    raise FieldError(field, f"expected a string or number, got {type(value).__name__}")


def _optional_str(record: dict, key: str, field: str | None = None) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise FieldError(field or key, f"expected a string, got {type(value).__name__}")
    return value


def _resolve_verifier(explicit: str | None, own: str | None, data_source: str) -> str:
    verifier = explicit or own or DATA_SOURCE_VERIFIERS.get(data_source)
    verifier = verifier or DATA_SOURCE_VERIFIERS.get(data_source.split("/")[0])
    if verifier is None:
        raise FieldError(
            "verifier",
            f"no verifier for data source {data_source!r}: add a 'verifier' field or pass verifier=... "
            f"(known data sources: {', '.join(sorted(DATA_SOURCE_VERIFIERS))})",
        )
    return verifier


# --------------------------------------------------------------------------------------------- schemas

RowParser = Callable[[dict, int, RowDefaults], Example]
SCHEMAS: Registry[RowParser] = Registry("schema")


@SCHEMAS.register("verl")
def verl_row(record: dict, index: int, defaults: RowDefaults) -> Example:
    """One verl row: ``data_source``, ``prompt`` messages, ``reward_model.ground_truth``, ``extra_info``."""
    data_source = defaults.data_source or _optional_str(record, "data_source")
    if not data_source:
        raise FieldError("data_source", "missing (or pass data_source=...)")
    if "prompt" not in record:
        raise FieldError("prompt", "missing")
    prompt = parse_messages(record["prompt"], "prompt")
    reward_model = record.get("reward_model")
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise FieldError("reward_model.ground_truth", "missing")
    ground_truth = gold_string(reward_model["ground_truth"], "reward_model.ground_truth")
    extra_info = record.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise FieldError("extra_info", f"expected an object, got {type(extra_info).__name__}")
    verifier = _resolve_verifier(
        defaults.verifier, _optional_str(extra_info, "verifier", "extra_info.verifier"), data_source
    )
    row_id = extra_info.get("index", index)
    extra = {
        k: v for k, v in record.items() if k not in ("data_source", "prompt", "reward_model", "extra_info")
    }
    return Example(
        problem_id=f"{data_source}/{row_id}",
        prompt=prompt,
        ground_truth=ground_truth,
        verifier=verifier,
        data_source=data_source,
        privileged_context=_optional_str(extra_info, "privileged_context", "extra_info.privileged_context"),
        extra={**extra, **extra_info},
    )


_TRL_KNOWN = (
    "prompt",
    "messages",
    *GROUND_TRUTH_COLUMNS,
    "privileged_context",
    "verifier",
    "data_source",
    "id",
    "extra_info",
)


@SCHEMAS.register("trl")
def trl_row(record: dict, index: int, defaults: RowDefaults) -> Example:
    """One TRL row: ``prompt`` or ``messages``, ``solution``/``ground_truth``/``answer``, optional extras."""
    if "prompt" in record:
        prompt = parse_messages(record["prompt"], "prompt")
    elif "messages" in record:
        prompt = parse_messages(record["messages"], "messages")
        while prompt and prompt[-1]["role"] == "assistant":  # the completion is not part of the prompt
            prompt.pop()
        if not prompt:
            raise FieldError("messages", "holds no message before the assistant's answer")
    else:
        raise FieldError("prompt", "missing (a TRL row needs 'prompt' or 'messages')")
    gold_key = next((k for k in GROUND_TRUTH_COLUMNS if record.get(k) is not None), None)
    if gold_key is None:
        raise FieldError(
            GROUND_TRUTH_COLUMNS[0], f"missing: expected one of {', '.join(GROUND_TRUTH_COLUMNS)}"
        )
    data_source = defaults.data_source or _optional_str(record, "data_source") or defaults.fallback_source
    row_id = record.get("id")
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, int | str) or row_id == ""):
        raise FieldError("id", f"expected a non-empty string or an integer, got {row_id!r}"[:200])
    extra_info = record.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise FieldError("extra_info", f"expected an object, got {type(extra_info).__name__}")
    extra = {k: v for k, v in record.items() if k not in _TRL_KNOWN}
    return Example(
        problem_id=f"{data_source}/{index}" if row_id is None else str(row_id),
        prompt=prompt,
        ground_truth=gold_string(record[gold_key], gold_key),
        verifier=_resolve_verifier(defaults.verifier, _optional_str(record, "verifier"), data_source),
        data_source=data_source,
        privileged_context=_optional_str(record, "privileged_context"),
        extra={**extra, **extra_info},
    )


# --------------------------------------------------------------------------------------------- loading


def parse_rows(
    rows: Iterable[RawRow], source: str, parse_row: Callable[[dict, int], Example]
) -> list[Example]:
    """Apply ``parse_row(record, index)`` to every row, gathering every FieldError (and duplicate ids)."""
    examples, issues, seen = [], [], {}
    for row in rows:
        try:
            example = parse_row(row.record, row.index)
        except FieldError as exc:
            issues.append(DataIssue(source, row.number, exc.field, exc.message, row.label))
            continue
        if example.problem_id in seen:
            message = (
                f"duplicate problem id {example.problem_id!r} (also {row.label} {seen[example.problem_id]})"
            )
            issues.append(DataIssue(source, row.number, None, message, row.label))
        seen.setdefault(example.problem_id, row.number)
        examples.append(example)
    if issues:
        raise DataError(issues)
    return examples


def _detect_schema(records: list[dict], schema: str) -> RowParser:
    if schema == "auto":  # any row, so that a first row missing the field is reported, not misread
        schema = "verl" if any("reward_model" in r for r in records) else "trl"
    return SCHEMAS.get(schema)


def load_examples(
    path: str | Path, *, schema: str = "auto", data_source: str | None = None, verifier: str | None = None
) -> list[Example]:
    """Read and check a whole dataset file; a ``DataError`` lists every bad row (file, row, field).

    schema: ``auto``, ``verl`` or ``trl``. data_source: overrides the rows' own (TRL default: the file stem).
    verifier: overrides the rows' own and the data-source default.
    """
    rows = read_rows(path)
    parser = _detect_schema([r.record for r in rows], schema)
    defaults = RowDefaults(data_source=data_source, verifier=verifier, fallback_source=Path(path).stem)
    return parse_rows(rows, str(path), lambda record, index: parser(record, index, defaults))


def examples_from_records(
    records: Iterable[dict],
    *,
    source: str = "<records>",
    schema: str = "trl",
    data_source: str | None = None,
    verifier: str | None = None,
) -> list[Example]:
    """In-memory records (e.g. a synthetic task generator's TRL-style dicts) as Examples, checked like a file.

    ``source`` names the records in error messages; rows are numbered from 1.
    """
    rows = [RawRow(i + 1, i, record, "record") for i, record in enumerate(records)]
    if not rows:
        raise DataError([DataIssue(source, None, None, "no records")])
    bad = [
        DataIssue(source, r.number, None, "expected a dict", r.label)
        for r in rows
        if not isinstance(r.record, dict)
    ]
    if bad:
        raise DataError(bad)
    parser = _detect_schema([r.record for r in rows], schema)
    defaults = RowDefaults(data_source=data_source, verifier=verifier, fallback_source="records")
    return parse_rows(rows, source, lambda record, index: parser(record, index, defaults))
