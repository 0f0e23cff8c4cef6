"""Documented config fields: a dataclass field carries its help text and its valid range in its metadata.

Used by every config section (``opdkit.train.configio`` reads the metadata: ``from_dict`` checks the range,
``--help-config`` prints the help). Stdlib only, so a section can be declared in any layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The valid range of a numeric field (each element of a tuple field), declared next to the field.

    ``ge``/``gt``/``le``/``lt``: inclusive/exclusive limits (None = none); a bounded number must be finite.
    ``None`` values of an optional field are not checked.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or None when it is in range."""
        if isinstance(value, (list, tuple)):
            return next((p for p in map(self.problem, value) if p is not None), None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        limits = ((self.ge, ">=", lambda x: value >= x), (self.gt, ">", lambda x: value > x),
                  (self.le, "<=", lambda x: value <= x), (self.lt, "<", lambda x: value < x))  # fmt: skip
        wanted = [f"{op} {limit:g}" for limit, op, ok in limits if limit is not None and not ok(limit)]
        if isinstance(value, float) and not math.isfinite(value):
            wanted.insert(0, "finite")
        return f"must be {' and '.join(wanted)}, got {value!r}" if wanted else None

    def describe(self) -> str:
        parts = [f"{op} {v:g}" for v, op in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="), (self.lt, "<"))
                 if v is not None]  # fmt: skip
        return " and ".join(parts)


def doc(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field with its documentation (``metadata["help"]``) and its valid values.

    ``ge``/``gt``/``le``/``lt`` declare the numeric range (``Bounds``); ``check(value) -> problem or None``
    any other rule (e.g. a registry name). ``from_dict`` enforces both, naming the key.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple or default_factory")
    bounds = Bounds(ge, gt, le, lt) if (ge, gt, le, lt) != (None, None, None, None) else None
    metadata = {"help": help, "bounds": bounds, "check": check, **kwargs}
    return dataclasses.field(default=default, metadata=metadata)


def section(
    factory: Callable[[], Any], help: str, *, resolver: Callable[[Mapping], type] | None = None
) -> Any:
    """A nested-section field; ``resolver(raw_dict) -> dataclass type`` makes it polymorphic."""
    return dataclasses.field(default_factory=factory, metadata={"help": help, "resolver": resolver})
