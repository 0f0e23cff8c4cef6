"""String normalisation of final math answers: the math verifier's cheap first stage (§9.1).

Two answers that normalise to the same string, or to the same exact rational number, are equal without
asking math-verify. The rules follow the Hendrycks MATH grader's ``strip_string`` (SCOPE's training reward)
and add the quirks of the benchmark files (README of ``shared/data/benchmarks``):

- LaTeX noise: ``\\left``/``\\right``, spacing, ``\\dfrac``/``\\tfrac``, degree signs, ``$``, ``\\%``;
- trailing units written as ``\\text{ cm}`` and a trailing full stop;
- text wrappers: ``\\text{(C)}`` -> ``C``, ``\\mathrm{Evelyn}`` -> ``Evelyn``;
- ``x = 5`` -> ``5`` when the left side is a short name;
- ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``, ``3/4`` -> ``\\frac{3}{4}``;
- numbers: thousands separators (GSM8K ``2,125``), leading zeros (AIME ``025``), trailing ``.0`` (AMC's float
  golds ``27.0``) and ``\\frac{a}{b}`` with integer a, b all become one exact ``Fraction``.

Example::

    normalize_answer(r"\\dfrac{1}{2}")   -> "\\frac{1}{2}"
    as_number("2,125")                    -> Fraction(2125, 1)
    as_number(normalize_answer("025"))    -> Fraction(25, 1)
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "\\$", "$")
_DEGREES = ("^{\\circ}", "^\\circ", "^{\\circ }", "\\circ", "°")
_WRAPPER_OR_BRACE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\{|[{}]")
# One whitespace then any non-brace run (not "\s+[^{}]*", whose two ambiguous runs backtrack quadratically).
_UNIT_SUFFIX = re.compile(r"\\(?:text|mbox|mathrm)\{\s[^{}]*\}\s*$|\\mathrm\{~[^{}]*\}\s*$")
_EQ_PREFIX = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=(?!=)")
_SQRT_BARE = re.compile(r"\\sqrt(\w)")
_FRAC_BARE = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_BARE = re.compile(r"\\frac\{([^{}]+)\}(\w)|\\frac(\w)\{([^{}]+)\}")
_INT_SLASH = re.compile(r"^(-?\d+)/(\d+)$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?$")
_MAX_NUMBER_CHARS = 400  # longer "numbers" go to math-verify, which runs under a time bound
_MAX_EXPONENT = 400  # Fraction(Decimal("1e999999999")) would build a billion-digit integer
_INT_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_OPTION = re.compile(r"^\(([A-Za-z])\)$")
MAX_NORMALIZE_CHARS = 10_000
"""Longer answers only lose their whitespace: no gold is that long, and it bounds the work per answer."""


def _fix_bare_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``; ``\\frac{a}b`` -> ``\\frac{a}{b}`` (Hendrycks ``fix_fracs``)."""
    s = _FRAC_BARE.sub(r"\\frac{\1}{\2}", s)

    def braces(m: re.Match) -> str:
        if m.group(1) is not None:
            return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
        return f"\\frac{{{m.group(3)}}}{{{m.group(4)}}}"

    return _FRAC_HALF_BARE.sub(braces, s)


def _unwrap_text(s: str) -> str:
    """Replace ``\\text{x}`` (and friends) by ``x`` when ``x`` has no braces left, innermost first.

    One left-to-right pass with a stack of open groups, in linear time (applying the Hendrycks-style regex
    until nothing changes took quadratic time on deeply nested wrappers). A wrapper group is unwrapped when
    it closes with no brace left inside it; any other closed group keeps its braces, and so do the wrappers
    around it: the regex rule's result, except that the regex also re-reads a wrapper that only appears
    once an inner one is gone (``\\tex\\text{}t{x}``), which this pass does not.
    """
    out: list[str] = []
    stack: list[list] = []  # per open group: [index of its opening piece in out, is a wrapper, keeps braces]
    pos = 0
    for m in _WRAPPER_OR_BRACE.finditer(s):
        out.append(s[pos : m.start()])
        pos = m.end()
        token = m.group()
        if token == "}" and stack:
            start, wrapper, braced = stack.pop()
            if wrapper and not braced:
                out[start] = ""  # drop "\\text{" and this "}"
                continue
            if stack:
                stack[-1][2] = True  # this group's braces stay inside the enclosing group
        elif token != "}":  # an unmatched "}" is kept as text
            stack.append([len(out), token != "{", False])
        out.append(token)
    out.append(s[pos:])
    return "".join(out)


def normalize_answer(answer: str) -> str:
    """Canonical string form of a final answer, for exact comparison (Hendrycks-style ``strip_string``).

    Never raises and runs in linear time; the result has no whitespace. Two answers with equal normal forms
    are the same answer. An answer longer than ``MAX_NORMALIZE_CHARS`` only loses its whitespace.
    """
    s = str(answer)
    if len(s) > MAX_NORMALIZE_CHARS:
        return "".join(s.split())
    s = s.replace("\n", "").strip()
    s = s.replace("\\\\", "\\").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _UNIT_SUFFIX.sub("", s)  # "5 \text{ cm}": a unit after a number, as Hendrycks removes it
    for token in _DROP:
        s = s.replace(token, "")
    for token in _DEGREES:
        s = s.replace(token, "")
    s = s.replace("\\%", "").replace("%", "")
    s = _unwrap_text(s).strip().rstrip(".").strip()
    s = _EQ_PREFIX.sub("", s, count=1) if s.count("=") == 1 else s
    s = _SQRT_BARE.sub(r"\\sqrt{\1}", s)
    s = re.sub(r"\s+", "", s)
    s = _fix_bare_fracs(s)
    if s.startswith("."):
        s = "0" + s
    slash = _INT_SLASH.match(s)
    if slash:
        s = f"\\frac{{{slash.group(1)}}}{{{slash.group(2)}}}"
    option = _OPTION.match(s)
    return option.group(1) if option else s


def as_number(normalized: str) -> Fraction | None:
    """The exact value of a plain number or integer fraction, else None.

    Accepts what ``normalize_answer`` leaves of ``-12``, ``025``, ``27.0``, ``2,125``, ``1e-3`` and
    ``\\frac{3}{4}``. Commas are read as thousands separators only in the ``d,ddd`` pattern, so ``1,2``
    (a pair) is not a number.
    """
    s = normalized
    if len(s) > _MAX_NUMBER_CHARS:  # also keeps int() below Python's 4,300-digit int-string limit
        return None
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    number = _NUMBER.match(s)
    if number:
        if number.group(1) is not None and abs(int(number.group(1))) > _MAX_EXPONENT:
            return None
        try:
            return Fraction(Decimal(s))
        except (InvalidOperation, ValueError, OverflowError):
            return None
    frac = _INT_FRAC.match(s)
    if frac and int(frac.group(3)) != 0:
        value = Fraction(int(frac.group(2)), int(frac.group(3)))
        return -value if frac.group(1) else value
    return None


def canonical_answer(answer: str) -> str:
    """A voting key for maj@k: the normal form, with numbers written as ``p`` or ``p/q`` in lowest terms.

    ``canonical_answer("0.5") == canonical_answer("\\frac{1}{2}") == "1/2"``.
    """
    normalized = normalize_answer(answer)
    value = as_number(normalized)
    if value is None:
        return normalized
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
