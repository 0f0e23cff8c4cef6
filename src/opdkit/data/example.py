"""The one row type every dataset is read into, and the one error type for bad data.

``Example`` is what the rollout, training and evaluation code sees, whatever the file format (verl parquet,
TRL JSON lines, a benchmark file, in-memory records from a synthetic task generator). ``DataError`` names the
file, the row (1-based line for JSON Lines, 1-based item/row number otherwise) and the field of every problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Example:
    """One prompt with its gold answer.

    problem_id: stable id, unique within a dataset (``<data_source>/<row id or 0-based row index>``).
    prompt: chat messages ``[{"role": ..., "content": ...}, ...]`` (system message first when present).
    ground_truth: the gold answer as a string, in the format of ``verifier``.
    verifier: name of the verifier in ``opdkit.rewards.VERIFIERS`` (``math``, ``mcq``, ``toolcall``, ...).
    data_source: what metrics are grouped by (``math500``, ``sciknoweval/chemistry``, ...).
    privileged_context: text only a self-teacher may see (TRL's ``privileged_context``); None when absent.
    extra: everything else worth keeping (subject, level, original answer, ``verifier_options``, ...).
    """

    problem_id: str
    prompt: list[dict[str, str]]
    ground_truth: str
    verifier: str
    data_source: str
    privileged_context: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def user_text(self) -> str:
        """Content of the last user message (what a self-teacher's reprompt rewrites, §4.4)."""
        for message in reversed(self.prompt):
            if message["role"] == "user":
                return message["content"]
        return ""

    @property
    def verifier_options(self) -> dict[str, Any]:
        """Per-row options for ``make_verifier`` (e.g. OlympiadBench's numeric tolerance); usually empty."""
        return dict(self.extra.get("verifier_options", {}))

    def to_trl_record(self) -> dict[str, Any]:
        """This example as a TRL-style record (``prompt``, ``solution``, ``verifier``, ...)."""
        record: dict[str, Any] = {
            "id": self.problem_id,
            "prompt": [dict(m) for m in self.prompt],
            "solution": self.ground_truth,
            "verifier": self.verifier,
            "data_source": self.data_source,
        }
        if self.privileged_context is not None:
            record["privileged_context"] = self.privileged_context
        if self.extra:
            record["extra_info"] = dict(self.extra)
        return record


@dataclass(frozen=True)
class DataIssue:
    """One problem found in a data file: where (file, row, field) and what."""

    source: str
    row: int | None
    field: str | None
    message: str
    row_label: str = "row"

    def __str__(self) -> str:
        where = self.source
        if self.row is not None:
            where += f", {self.row_label} {self.row}"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


class DataError(ValueError):
    """Malformed input data; the message lists every problem found (up to 20) with file, row and field."""

    MAX_SHOWN = 20

    def __init__(self, issues: list[DataIssue]) -> None:
        self.issues = list(issues)
        shown = [str(issue) for issue in self.issues[: self.MAX_SHOWN]]
        more = len(self.issues) - len(shown)
        lines = shown + ([f"... and {more} more problems"] if more > 0 else [])
        super().__init__("\n".join(lines) if len(lines) > 1 else lines[0] if lines else "bad data")


class FieldError(ValueError):
    """Raised by row parsers for one bad field; the loader adds the file and row and gathers them."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
