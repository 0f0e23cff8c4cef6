"""Where examples come from: a synthetic task, a benchmark name, or a data file.

``resolve_examples(spec, split, task)``:

- ``"task"``: the synthetic task of ``task`` (``opdkit.tasks``), ``split`` "train" or "eval" (disjoint);
- a registered benchmark (``"math500"``, ``"sciknoweval/chemistry:train"``; see ``opdkit.data.BENCHMARKS``);
- anything else is a path to a JSON Lines / JSON / parquet file in the verl or TRL schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opdkit.data import BENCHMARKS, Example, examples_from_records, load_benchmark, load_examples
from opdkit.tasks.generate import TaskSpec, generate_splits, make_row


@dataclass(frozen=True)
class TaskSource:
    """A synthetic task and the sizes of its splits (the ``data.task`` config section maps onto this)."""

    name: str = "addition"
    style: str = "boxed"
    difficulty: int | None = None
    train_size: int = 2000
    eval_size: int = 100
    seed: int = 0
    instruction: bool = True


def task_examples(task: TaskSource, split: str) -> list[Example]:
    """The task's train or eval split as Examples (problem ids are stable for a given seed and size)."""
    spec = TaskSpec(
        task=task.name, difficulty=task.difficulty, style=task.style, instruction=task.instruction
    )
    splits = generate_splits(spec, task.train_size, task.eval_size, task.seed)
    problems = {"train": splits.train, "eval": splits.test}
    if split not in problems:
        raise ValueError(f"unknown split {split!r}; valid: train, eval")
    return task_examples_from_problems(spec, problems[split], split)


def task_examples_from_problems(spec: TaskSpec, problems: list, split: str) -> list[Example]:
    """Examples (TRL-style rows, checked like a file) for given problems of a synthetic task."""
    records = [make_row(spec, p, f"{spec.task}-{split}-{i}") for i, p in enumerate(problems)]
    return examples_from_records(records, source=f"task {spec.task} ({split})")


def resolve_examples(spec: str, split: str, task: TaskSource | None = None) -> list[Example]:
    """Examples for a data spec (see the module docstring)."""
    if spec == "task":
        return task_examples(task or TaskSource(), split)
    name = spec.partition(":")[0]
    if name in BENCHMARKS:
        return load_benchmark(spec)
    if Path(spec).exists():
        return load_examples(spec)
    raise FileNotFoundError(
        f"data {spec!r} is neither 'task', a benchmark ({', '.join(BENCHMARKS.names())}) nor an existing file"
    )
