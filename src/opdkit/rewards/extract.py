"""Answer extraction shared by every verifier: boxed answers, answer tags and tool calls.

These are plain string functions with real brace matching (ALGORITHMS.md §9.1-§9.3). They never raise on
odd input: an unclosed brace or missing tag gives None / an empty result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_at``, or None when it is never closed."""
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _boxed_at(text: str, start: int, command: str) -> str | None:
    """Content of the box command found at ``start`` (``\\boxed{x}`` or ``\\boxed x``), or None."""
    i = start + len(command)
    if text.startswith("{", i):
        close = _matching_brace(text, i)
        return None if close is None else text[i + 1 : close]
    if command == "\\boxed" and text.startswith(" ", i):  # "\boxed 5": the argument runs to "$" or the end
        return text[i + 1 :].split("$")[0].strip() or None
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, braces matched.

    ``last_boxed(r"so \\boxed{\\frac{1}{2}}.")`` -> ``"\\frac{1}{2}"``. An unclosed last box is skipped in
    favour of the previous complete one (SCOPE evaluates the last *complete* box).
    """
    positions = sorted(
        (m.start(), cmd) for cmd in _BOX_COMMANDS for m in re.finditer(re.escape(cmd) + r"(?![a-zA-Z])", text)
    )
    for start, cmd in reversed(positions):
        content = _boxed_at(text, start, cmd)
        if content is not None:
            return content
    return None


def last_tag(text: str, tag: str = "answer") -> str | None:
    """Whitespace-stripped text after the last ``<tag>`` up to the next ``</tag>`` (or the end), else None.

    ALGORITHMS.md §9.2: the MCQ prediction is the content of the last ``<answer>`` block.
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


_ACTION_RE = re.compile(r"Action:\s*(\w+)")
_INPUT_RE = re.compile(r"Action Input:")
_COMPAT_INPUT_RE = re.compile(r"Action Input:\s*(\{.*?\})", re.DOTALL)


def _json_objects_after_inputs(text: str) -> list[str]:
    """The brace-matched ``{...}`` block that follows each ``Action Input:`` (nested objects kept whole)."""
    blocks = []
    for m in _INPUT_RE.finditer(text):
        open_at = text.find("{", m.end())
        if open_at < 0 or text[m.end() : open_at].strip():
            continue  # no object directly after the marker
        close = _matching_brace(text, open_at)
        if close is not None:
            blocks.append(text[open_at : close + 1])
    return blocks


def parse_tool_calls(text: str, *, compat_regex: bool = False) -> ToolCalls:
    """Parse ``Action:`` names and merge the ``Action Input:`` JSON objects (ALGORITHMS.md §9.3).

    ``compat_regex=True`` reproduces the reference's non-greedy ``{.*?}`` match, which cuts nested objects
    short (kept for parity with lasgroup/SDPO); the default matches braces properly. Unparsable or non-object
    blocks are skipped.
    """
    actions = _ACTION_RE.findall(text)
    blocks = _COMPAT_INPUT_RE.findall(text) if compat_regex else _json_objects_after_inputs(text)
    merged: dict = {}
    for block in blocks:
        try:
            obj = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            merged.update(obj)
    return ToolCalls(actions=actions, inputs=merged)
