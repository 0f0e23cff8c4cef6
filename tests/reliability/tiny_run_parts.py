"""Parts of a short real training run for the reliability tests: a tiny student and teacher built locally (no
download), a toy data file, and a verifier that gives a random character-level model a mixed pass rate, so
every method has a learning signal (and so real optimizer updates) from the first step.

Imported by the test modules of this folder (a plain module, not a conftest, so it holds no fixtures).
"""

from __future__ import annotations

import json
from pathlib import Path

from lm_fixtures import save_tiny_pair
from opdkit.rewards.base import VERIFIERS, Verdict

VERIFIER = "reliability/first_char"
HALF_OF_THE_VOCABULARY = "abcdefghijklm0123456789"  # what a random char model emits first about half the time


def _first_char_verifier():
    def verify(completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        ok = bool(completion) and completion[0] in ground_truth
        return Verdict(score=float(ok), correct=ok, pred=completion[:1] or None, feedback="" if ok else "no")

    return verify


def build_parts(root: Path) -> dict[str, Path]:
    """Write ``student/``, ``teacher/`` (two tiny models, seeds 0 and 1) and ``toy.jsonl`` under ``root``."""
    if VERIFIER not in VERIFIERS:
        VERIFIERS.add(VERIFIER, _first_char_verifier)
    parts = dict(save_tiny_pair(root))
    rows = [
        {"prompt": [{"role": "user", "content": f"Say something ({i})"}], "solution": HALF_OF_THE_VOCABULARY,
         "verifier": VERIFIER, "data_source": "toy"}
        for i in range(24)
    ]  # fmt: skip
    parts["data"] = root / "toy.jsonl"
    parts["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parts


def run_overrides(parts: dict[str, Path], method: str, steps: int) -> list[str]:
    """Dotted overrides of a short run (4 questions x 4 rollouts of 6 tokens) on these parts."""
    return [
        f"method.name={method}", f"model.student={parts['student']}", f"steps={steps}",
        "rollout.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=6",
        f"data.train={parts['data']}", f"data.eval={parts['data']}", "eval.k=2", "eval.num_problems=3",
        "eval.at_start=false", "teacher.kind=local", f"teacher.path={parts['teacher']}", "optim.lr=0.001",
    ]  # fmt: skip
