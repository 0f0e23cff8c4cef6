"""The math verifier's fast path: normal forms and exact numbers of final answers (§9.1)."""

from fractions import Fraction

import pytest

from opdkit.rewards.normalize import as_number, canonical_answer, normalize_answer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),  # dfrac/tfrac are frac
        (r"\frac12", r"\frac{1}{2}"),  # Hendrycks fix_fracs
        (r"\frac{3}4", r"\frac{3}{4}"),
        ("3/4", r"\frac{3}{4}"),  # integer a/b -> \frac{a}{b}
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"50\%", "50"),
        (r"\$18", "18"),
        (r"$x$", "x"),
        (r"\text{(C)}", "C"),  # an option written as text, with parentheses
        ("(C)", "C"),
        (r"\text{Evelyn}", "Evelyn"),
        (r"\textbf{\text{B}}", "B"),  # nested wrappers, innermost first
        (r"5 \text{ cm}", "5"),  # a trailing unit, as Hendrycks removes it
        (r"1.6 \mathrm{~cm}", "1.6"),  # Minerva's unit style
        ("x = 5", "5"),  # short left-hand side dropped
        ("f(x) = 2x", "f(x)=2x"),  # not a short name: kept
        (r"\sqrt3", r"\sqrt{3}"),
        (".5", "0.5"),
        ("12.", "12"),  # a trailing full stop
        ("p - q", "p-q"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("025", Fraction(25)),  # AIME leading zeros
        ("27.0", Fraction(27)),  # AMC float golds
        ("2,125", Fraction(2125)),  # GSM8K thousands separators
        ("1,450,000", Fraction(1450000)),
        ("-1", Fraction(-1)),
        ("0.5", Fraction(1, 2)),
        ("1e-3", Fraction(1, 1000)),
        (r"\frac{14}{3}", Fraction(14, 3)),
        (r"-\frac{1}{2}", Fraction(-1, 2)),
        (r"\frac{-1}{2}", Fraction(-1, 2)),
    ],
)
def test_as_number_reads_exact_values(text, value):
    assert as_number(text) == value


@pytest.mark.parametrize(
    "text", ["1,2", "12,34", "(1,2)", "x", r"\frac{1}{0}", r"\frac{\pi}{2}", "1e999999", ""]
)
def test_as_number_refuses_non_numbers(text):
    # "1,2" is a pair, not a thousands-separated number; 1e999999 would build a million-digit integer.
    assert as_number(text) is None


def test_canonical_answer_is_a_voting_key():
    assert canonical_answer("0.5") == canonical_answer(r"\frac{1}{2}") == canonical_answer("1/2") == "1/2"
    assert canonical_answer("025") == canonical_answer("25.0") == "25"
    assert canonical_answer(r"\text{(B)}") == "B"
