"""Datasets as ``Example`` rows: file readers (verl / TRL schemas) and the papers' benchmark adapters.

- ``load_examples(path, schema="auto")``: JSON Lines, JSON or parquet in the verl or TRL schema.
- ``examples_from_records(records)``: in-memory TRL-style dicts (e.g. from a synthetic task generator).
- ``load_benchmark("math500")``, ``load_benchmark("sciknoweval/chemistry:train")``: the evaluation sets under
  ``benchmarks_dir()``; ``BENCHMARKS.names()`` lists them.

Every loader checks the whole input first and raises one ``DataError`` naming file, row and field.
"""

from opdkit.data.benchmarks import (
    BENCHMARKS,
    MATH_TEMPLATE,
    Benchmark,
    benchmarks_dir,
    find_benchmarks_dir,
    load_benchmark,
    parse_spec,
)
from opdkit.data.example import DataError, DataIssue, Example
from opdkit.data.readers import (
    DATA_SOURCE_VERIFIERS,
    SCHEMAS,
    examples_from_records,
    load_examples,
    read_rows,
)

__all__ = [
    "BENCHMARKS",
    "DATA_SOURCE_VERIFIERS",
    "MATH_TEMPLATE",
    "SCHEMAS",
    "Benchmark",
    "DataError",
    "DataIssue",
    "Example",
    "benchmarks_dir",
    "examples_from_records",
    "find_benchmarks_dir",
    "load_benchmark",
    "load_examples",
    "parse_spec",
    "read_rows",
]
