"""Every reference in the shipped code resolves inside the repository.

The code cites its formulas as ``docs/algorithms.md §5.4`` (or just ``§5.4``) and the open choices as
``§11 A8``. A clone of the repository must be able to follow each one, so:

- every ``§N(.M)*`` in ``src/`` names a numbered heading of ``docs/algorithms.md``, and every ``§11 An`` an
  entry ``An.`` of its section 11;
- ``src/`` names no document that the repository does not ship (the developers' private spec files) and no
  issue number of a tracker (a number means nothing to a reader; the comment should say what it means);
- the same holds for the README, ``docs/``, ``tests/`` and ``benchmarks/``.

Failures list every offending ``file:line`` so that references added by a later merge can be fixed at once.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
ALGORITHMS = ROOT / "docs" / "algorithms.md"
# read by people as much as src/: the same rules for their references
OTHER_ROOTS = (ROOT / "README.md", ROOT / "docs", ROOT / "tests", ROOT / "benchmarks")

SECTION_REF = re.compile(r"§\s?(\d+(?:\.\d+)*)")
AMBIGUITY_REF = re.compile(r"§\s?11,?\s+(A\d+)")
# A numbered heading of docs/algorithms.md: "## 5. SCOPE ..." or "### 5.4 Weights".
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
AMBIGUITY_ENTRY = re.compile(r"^- \*\*(A\d+)\.", re.MULTILINE)
EXTERNAL_DOC = re.compile(r"ALGORITHMS\.md|DESIGN\.md|FACTS\.md|VERL_SDPO\.md|shared/spec")
# "issue 12", "issues #3", "PR 7", "#12" (a tracker number); hex colours and "#: " doc comments do not match.
ISSUE_NUMBER = re.compile(r"\b(?:issues?|PR|pull request)\s*#?\d+|(?<![\w&/])#\d+\b", re.IGNORECASE)


def _source_lines(roots: tuple[Path, ...] = (SRC,)) -> list[tuple[str, int, str]]:
    """(path from the repository root, line number from 1, text) of each line of the text files in roots."""
    rows = []
    paths = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*")))]
    for path in paths:
        if path == Path(__file__).resolve():
            continue  # this file names the patterns it looks for
        if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".md", ".txt", ".toml"}:
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(ROOT).as_posix()
            rows.extend((rel, number, line) for number, line in enumerate(text.splitlines(), 1))
    return rows


def _offences(pattern: re.Pattern[str], keep=lambda match: True, roots=(SRC,)) -> list[str]:
    return [
        f"{rel}:{number}: {match.group(0)!r}"
        for rel, number, line in _source_lines(roots)
        for match in pattern.finditer(line)
        if keep(match)
    ]


def test_algorithms_doc_is_shipped_with_numbered_headings():
    headings = set(HEADING.findall(ALGORITHMS.read_text(encoding="utf-8")))
    # Sections 0-11 exist, as the code's references assume; one subsection spot-checked per family.
    assert {str(n) for n in range(12)} <= headings
    assert {"2.2", "3.3", "4.7", "5.4", "6.1", "7.4", "8.1", "9.3", "10.4"} <= headings


def _unresolved_references(roots: tuple[Path, ...]) -> list[str]:
    text = ALGORITHMS.read_text(encoding="utf-8")
    headings = set(HEADING.findall(text))
    entries = set(AMBIGUITY_ENTRY.findall(text[text.index("## 11.") :]))
    unresolved = _offences(SECTION_REF, lambda m: m.group(1) not in headings, roots)
    return unresolved + _offences(AMBIGUITY_REF, lambda m: m.group(1) not in entries, roots)


def test_every_section_reference_in_src_resolves():
    unresolved = _unresolved_references((SRC,))
    assert not unresolved, "references with no heading in docs/algorithms.md:\n" + "\n".join(unresolved)


def test_every_section_reference_in_docs_tests_and_benchmarks_resolves():
    unresolved = _unresolved_references(OTHER_ROOTS)
    assert not unresolved, "references with no heading in docs/algorithms.md:\n" + "\n".join(unresolved)


def test_src_names_no_document_outside_the_repository():
    found = _offences(EXTERNAL_DOC)
    assert not found, "src/ cites documents a clone does not contain (cite docs/...):\n" + "\n".join(found)


def test_docs_tests_and_benchmarks_name_no_document_outside_the_repository():
    found = _offences(EXTERNAL_DOC, roots=OTHER_ROOTS)
    assert not found, "these files cite documents a clone does not contain:\n" + "\n".join(found)


def test_src_names_no_issue_number():
    found = _offences(ISSUE_NUMBER)
    assert not found, "src/ cites tracker numbers (say what they mean instead):\n" + "\n".join(found)


def test_docs_tests_and_benchmarks_name_no_issue_number():
    found = _offences(ISSUE_NUMBER, roots=OTHER_ROOTS)
    assert not found, "these files cite tracker numbers (say what they mean instead):\n" + "\n".join(found)


def test_patterns_catch_what_they_are_for():
    # The checks above pass vacuously if a pattern never matches: pin each on lines it must (not) flag.
    assert SECTION_REF.findall("A = r (§1.6); see §5.4 and § 11") == ["1.6", "5.4", "11"]
    assert AMBIGUITY_REF.findall("(§11 A8) and (§11, A12)") == ["A8", "A12"]
    assert HEADING.findall("## 5. SCOPE\n### 5.4 Weights\n## Appendix A") == ["5", "5.4"]
    assert EXTERNAL_DOC.search("see ALGORITHMS.md §2") and EXTERNAL_DOC.search("../shared/spec/x")
    assert ISSUE_NUMBER.search("(core.chunked, issue 8)") and ISSUE_NUMBER.search("fixes #12")
    assert not ISSUE_NUMBER.search('color="#1f77b4"') and not ISSUE_NUMBER.search("#: the presets")
    assert not ISSUE_NUMBER.search("DataIssue(source, 3)") and not ISSUE_NUMBER.search("issues.append(x)")
