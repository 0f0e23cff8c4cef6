"""Boxed-answer extraction from LaTeX text, with real brace matching (docs/algorithms.md §9.1).

Lives in core because both the verifiers (``opdkit.rewards``) and the benchmark adapters (``opdkit.data``:
Minerva's gold answer is the box in its solution) need it, and L1 packages do not import each other.
Plain stdlib string code; it never raises on odd input and runs in linear time, so a completion full of
unclosed ``\\boxed{`` commands cannot stall a verifier.

Example::

    last_boxed(r"first \\boxed{1}, then \\boxed{\\frac{1}{2}}.")   # "\\frac{1}{2}"
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(boxed|fbox)(?![a-zA-Z])")
_BRACE_RE = re.compile(r"[{}]")


def closing_braces(text: str, start: int = 0) -> dict[int, int]:
    """Map the index of every ``{`` at or after ``start`` that gets closed to the index of its ``}``."""
    closes, stack = {}, []
    for m in _BRACE_RE.finditer(text, start):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closes[stack.pop()] = m.start()
    return closes


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, braces matched.

    ``\\boxed 5`` (no braces) gives the text up to the next ``$`` or the end. An unclosed last box is
    skipped in favour of the previous complete one (SCOPE evaluates the last *complete* box). ``\\boxedx``
    is not a box command.
    """
    boxes = list(_BOX_RE.finditer(text))
    if not boxes:
        return None
    closes = closing_braces(text, boxes[0].end())
    for m in reversed(boxes):
        i = m.end()
        if text.startswith("{", i):
            if i in closes:
                return text[i + 1 : closes[i]]
        elif m.group(1) == "boxed" and text.startswith(" ", i):  # "\boxed 5": runs to "$" or the end
            content = text[i + 1 :].split("$")[0].strip()
            if content:
                return content
    return None
