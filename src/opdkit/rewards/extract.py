"""Answer extraction shared by every verifier: boxed answers, answer tags and tool calls.

These are plain string functions with real brace matching (docs/algorithms.md §9.1-§9.3). They never raise on
odd input: an unclosed brace or missing tag gives None / an empty result. ``last_boxed`` lives in
``opdkit.core.latex`` (the benchmark adapters need it too) and is re-exported here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from opdkit.core.latex import last_boxed

__all__ = ["ToolCalls", "last_boxed", "last_tag", "parse_tool_calls"]


def last_tag(text: str, tag: str = "answer") -> str | None:
    """Whitespace-stripped text after the last ``<tag>`` up to the next ``</tag>`` (or the end), else None.

    docs/algorithms.md §9.2: the MCQ prediction is the content of the last ``<answer>`` block.
    """
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    start = text.rfind(open_tag)
    if start < 0:
        return None
    rest = text[start + len(open_tag) :]
    end = rest.find(close_tag)
    return (rest if end < 0 else rest[:end]).strip()


@dataclass(frozen=True)
class ToolCalls:
    """Tool calls parsed from a ReAct-style completion.

    actions: every identifier after ``Action:`` in order (duplicates kept; compared as a multiset).
    inputs: the ``Action Input:`` JSON objects merged with ``dict.update`` (later keys win).
    """

    actions: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)


# An action name may start with a bracketed tag: a ToolAlpaca gold action is "[Optional]updateUserProfile".
_ACTION_RE = re.compile(r"Action:\s*((?:\[\w+\])?\w+)")
_COMPAT_ACTION_RE = re.compile(r"Action:\s*(\w+)")  # the reference's: "Action: [Optional]x" yields nothing
_INPUT_RE = re.compile(r"Action Input:\s*")
_COMPAT_INPUT_RE = re.compile(r"Action Input:\s*(\{.*?\})", re.DOTALL)
_DECODER = json.JSONDecoder()


def _objects_after_inputs(text: str) -> list:
    """The JSON value that starts right after each ``Action Input:`` (skipping whitespace), decoded.

    ``JSONDecoder.raw_decode`` reads exactly one value, so nested objects and braces inside strings are
    handled; text after the value is ignored. A marker followed by invalid JSON contributes nothing.
    """
    values = []
    for m in _INPUT_RE.finditer(text):
        start = m.end()
        if not text.startswith("{", start):
            continue  # no object directly after the marker
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
            continue
        values.append(value)
    return values


def _compat_objects(text: str) -> list:
    """The reference's parse: non-greedy ``{.*?}`` after each marker, then ``json.loads`` (errors skipped)."""
    values = []
    for block in _COMPAT_INPUT_RE.findall(text):
        try:
            values.append(json.loads(block))
        except json.JSONDecodeError:
            continue
    return values


def parse_tool_calls(text: str, *, compat_regex: bool = False) -> ToolCalls:
    """Parse ``Action:`` names and merge the ``Action Input:`` JSON objects (docs/algorithms.md §9.3).

    ``compat_regex=True`` reproduces the reference's regexes (kept for parity with lasgroup/SDPO): the
    non-greedy ``{.*?}`` match, which cuts nested objects short, and ``\\w+`` action names, which cannot read
    a bracketed name such as ``[Optional]updateUserProfile``. The default decodes one whole JSON value after
    each marker (nested objects and braces inside strings work) and reads an optional ``[tag]`` prefix of a
    name. Unparsable or non-object inputs are skipped.
    """
    actions = (_COMPAT_ACTION_RE if compat_regex else _ACTION_RE).findall(text)
    merged: dict = {}
    for obj in _compat_objects(text) if compat_regex else _objects_after_inputs(text):
        if isinstance(obj, dict):
            merged.update(obj)
    return ToolCalls(actions=actions, inputs=merged)
