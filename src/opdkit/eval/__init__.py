"""Evaluation: resolve data sources, sample k completions per problem, verify, summarise (§8)."""

from opdkit.eval.datasets import TaskSource, resolve_examples, task_examples
from opdkit.eval.evaluate import EvalResult, EvalSettings, evaluate, summarize, write_eval

__all__ = [
    "EvalResult",
    "EvalSettings",
    "TaskSource",
    "evaluate",
    "resolve_examples",
    "summarize",
    "task_examples",
    "write_eval",
]
