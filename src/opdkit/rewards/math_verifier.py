"""The math verifier: last boxed answer, normalised compare, then math-verify (docs/algorithms.md §9.1).

Steps for one completion:

1. Extraction: the content of the last complete ``\\boxed{...}``/``\\fbox{...}``, braces matched
   (``tail_chars=100`` looks only at the last 100 characters, as lasgroup/SDPO's training reward does; the
   default looks at the whole response, as SCOPE's evaluation does).
2. Fast path: Hendrycks-style normal forms equal -> correct; both sides exact numbers -> compare them
   (``abs_tol`` for OlympiadBench's one toleranced row) without math-verify.
3. Otherwise math-verify ``verify(parse(\\boxed{gold}), parse(\\boxed{pred}))`` in a worker process,
   bounded by ``timeout_s``; an exception or a timeout counts as wrong. ``workers=0`` runs it in this
   process instead, which is only bounded on the main thread (and refuses to run elsewhere).

``pred`` in the verdict is a voting key for maj@k (``canonical_answer``: ``0.5`` and ``\\frac{1}{2}`` vote
together). Feedback (``feedback=``):

- ``"format"`` (default, lasgroup/SDPO's default): the truncation message when a wrong response was cut off,
  else the format message when no box was found; correct answers get none;
- ``"safe"``: also a message that a parsed answer is wrong, without revealing the answer;
- ``"oracle"``: also "... The correct answer is <gold>." (reveals the answer; only when asked);
- ``"none"``: never any.

Example::

    verify = MathVerifier(feedback="oracle")
    verify(r"So \\boxed{\\dfrac{1}{2}}.", "0.5").correct              # True (fast path)
    verify(r"The answer is 7", "8").feedback                          # the format message
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from opdkit.rewards.base import VERIFIERS, Verdict, VerifierUnavailableError
from opdkit.rewards.extract import last_boxed
from opdkit.rewards.normalize import as_number, canonical_answer, normalize_answer
from opdkit.rewards.pool import default_pool_size, shared_pool

FORMAT_FEEDBACK = (
    "Your answer had the wrong format. The solution must be given in the format: \\boxed{your_answer}."
)
TRUNCATION_FEEDBACK = "Your response was truncated because it exceeded the maximum length."
WRONG_ANSWER_FEEDBACK = (
    "Your boxed final answer was parsed, but it is incorrect. Recheck the reasoning and final calculation."
)
FEEDBACK_MODES = ("none", "format", "safe", "oracle")
MAX_ANSWER_CHARS = (
    10_000  # longer answers that are not string-equal to the gold are wrong without math-verify
)


def oracle_feedback(ground_truth: str) -> str:
    """The answer-revealing message (lasgroup/SDPO ``correctness_feedback``)."""
    return f"Your answer is incorrect. The correct answer is {ground_truth}."


def gold_answer(ground_truth: str) -> str:
    """The gold answer itself: a boxed gold is unboxed, surrounding ``$`` and spaces are dropped."""
    text = str(ground_truth).strip()
    if "\\boxed" in text or "\\fbox" in text:
        text = last_boxed(text) or text
    return text.strip().strip("$").strip()


def _inline_equivalent(gold: str, pred: str, timeout_s: float) -> bool:
    """math-verify in this process, bounded by an interval timer (main thread only)."""
    import signal

    from opdkit.rewards import _mathverify_worker as worker

    if threading.current_thread() is not threading.main_thread():
        raise VerifierUnavailableError(
            "MathVerifier(workers=0) is only time-bounded on the main thread; use workers >= 1"
        )
    from math_verify import parse, verify  # the `math` extra; imported here so `import opdkit` stays cheap

    # math-verify warns that its own timeouts are off on every call; here the interval timer bounds the check.
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    previous = signal.signal(signal.SIGALRM, worker._on_alarm)
    try:
        return bool(worker._check(parse, verify, gold, pred, timeout_s)["ok"])
    finally:
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True, kw_only=True)
class MathVerifier:
    """Boxed-answer math verifier (docs/algorithms.md §9.1); registered as ``"math"``.

    feedback: one of ``FEEDBACK_MODES`` (see the module docstring).
    timeout_s: bound on one math-verify check (parse both sides and compare); the reference uses 5 s.
    workers: math-verify worker processes (shared per process); None = CPU count capped at 4; 0 = in-process.
    tail_chars: only look for the box in the last this-many characters (lasgroup/SDPO: 100); None = all.
    abs_tol: absolute tolerance when both answers are plain numbers (0 = exact).
    """

    feedback: str = "format"
    timeout_s: float = 5.0
    workers: int | None = None
    tail_chars: int | None = None
    abs_tol: float = 0.0

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK_MODES:
            raise ValueError(
                f"math feedback must be one of {', '.join(FEEDBACK_MODES)}; got {self.feedback!r}"
            )
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 or None, got {self.workers}")
        if self.tail_chars is not None and self.tail_chars < 1:
            raise ValueError(f"tail_chars must be >= 1 or None, got {self.tail_chars}")

    def extract(self, completion: str) -> str | None:
        """The last boxed answer in the completion (or its tail), stripped; None when absent or empty."""
        text = completion if self.tail_chars is None else completion[-self.tail_chars :]
        boxed = (last_boxed(text) or "").strip()
        return boxed or None

    def quick_check(self, gold: str, pred: str) -> bool | None:
        """The fast path: True/False when normal forms settle it, None when math-verify must decide.

        An answer longer than ``MAX_ANSWER_CHARS`` that is not string-equal to the gold is wrong: no gold is
        that long, and such a request would only occupy a worker until its deadline.
        """
        gold_norm, pred_norm = normalize_answer(gold), normalize_answer(pred)
        if gold_norm == pred_norm:
            return True
        gold_num, pred_num = as_number(gold_norm), as_number(pred_norm)
        if gold_num is not None and pred_num is not None:
            return abs(gold_num - pred_num) <= self.abs_tol
        if max(len(gold), len(pred)) > MAX_ANSWER_CHARS:
            return False
        return None

    def equivalent(self, gold: str, pred: str) -> bool:
        """math-verify equivalence under the time bound (in a worker process unless ``workers == 0``)."""
        if self.workers == 0:
            return _inline_equivalent(gold, pred, self.timeout_s)
        return shared_pool(self.workers or default_pool_size()).equivalent(
            gold, pred, timeout_s=self.timeout_s
        )

    def _feedback(self, correct: bool, pred: str | None, truncated: bool, ground_truth: str) -> str:
        if correct or self.feedback == "none":
            return ""
        if truncated:
            return TRUNCATION_FEEDBACK
        if pred is None:
            return FORMAT_FEEDBACK
        if self.feedback == "oracle":
            return oracle_feedback(ground_truth)
        return WRONG_ANSWER_FEEDBACK if self.feedback == "safe" else ""

    def _verdict(self, correct: bool, pred: str | None, truncated: bool, ground_truth: str) -> Verdict:
        return Verdict(
            score=1.0 if correct else 0.0,
            correct=correct,
            pred=None if pred is None else canonical_answer(pred),
            feedback=self._feedback(correct, pred, truncated, ground_truth),
        )

    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        pred, gold = self.extract(completion), gold_answer(ground_truth)
        correct = False
        if pred is not None:
            quick = self.quick_check(gold, pred)
            correct = quick if quick is not None else self.equivalent(gold, pred)
        return self._verdict(correct, pred, truncated, ground_truth)

    def verify_batch(
        self, completions: Sequence[str], ground_truths: Sequence[str], truncated: Sequence[bool]
    ) -> list[Verdict]:
        """Verdicts for many completions; the math-verify checks run in parallel over the worker pool."""
        preds = [self.extract(c) for c in completions]
        golds = [gold_answer(g) for g in ground_truths]
        correct = [False if p is None else self.quick_check(g, p) for g, p in zip(golds, preds)]
        undecided = [i for i, c in enumerate(correct) if c is None]
        if self.workers == 0 or len(undecided) <= 1:
            for i in undecided:
                correct[i] = self.equivalent(golds[i], preds[i])
        else:
            threads = min(len(undecided), self.workers or default_pool_size())
            with ThreadPoolExecutor(max_workers=threads) as executor:
                results = executor.map(lambda i: self.equivalent(golds[i], preds[i]), undecided)
                for i, ok in zip(undecided, results):
                    correct[i] = ok
        return [
            self._verdict(bool(c), p, t, g) for c, p, t, g in zip(correct, preds, truncated, ground_truths)
        ]


VERIFIERS.add("math", MathVerifier)
