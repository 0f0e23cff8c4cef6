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
_DECODER = json.JSONDecoder()
MAX_FAILED_INPUTS = 100
"""``Action Input:`` markers whose JSON fails to decode before the rest are ignored. Each failure costs time
linear in its offset (``JSONDecodeError`` counts the lines before it), so without a cap 50,000 markers took
seconds; a real completion has a handful of calls."""
_JSON_ERRORS = (ValueError, RecursionError)  # JSONDecodeError; ints over 4,300 digits; absurd nesting


def _objects_after_inputs(text: str) -> list:
    """The JSON value that starts right after each ``Action Input:`` (skipping whitespace), decoded.

    ``JSONDecoder.raw_decode`` reads exactly one value, so nested objects and braces inside strings are
    handled; text after the value is ignored. A marker followed by invalid JSON contributes nothing; after
    ``MAX_FAILED_INPUTS`` such markers the rest of the text is not read.
    """
    values, failures = [], 0
    for m in _INPUT_RE.finditer(text):
        start = m.end()
        if not text.startswith("{", start):
            continue  # no object directly after the marker
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except _JSON_ERRORS:
            failures += 1
            if failures >= MAX_FAILED_INPUTS:
                break
            continue
        values.append(value)
    return values


def _compat_objects(text: str) -> list:
    """The reference's parse: non-greedy ``{.*?}`` after each marker, then ``json.loads`` (errors skipped).

    Same matches as ``re.findall(r"Action Input:\\s*(\\{.*?\\})", text, re.DOTALL)``, found in linear time:
    that regex rescans to the end of the text from every marker when no ``}`` follows (minutes for 50,000
    markers). Matches do not overlap: a marker inside the previous block is skipped, as ``findall`` does.
    """
    values, taken_until, close = [], 0, -1
    for m in _INPUT_RE.finditer(text):
        start = m.end()
        if m.start() < taken_until or not text.startswith("{", start):
            continue
        if close < start:  # the next "}" at or after start; the search moves forward only
            close = text.find("}", start)
            if close < 0:
                break  # no "}" anywhere after: no later marker can match either
        taken_until = close + 1
        try:
            values.append(json.loads(text[start:taken_until]))
        except _JSON_ERRORS:
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
