"""The verdict type every verifier returns, the verifier protocol and the one verifier registry.

A verifier is a callable ``(completion, ground_truth, *, truncated=False) -> Verdict``. ``ground_truth`` is a
string in the verifier's own format (a LaTeX answer, an option letter, a JSON list of tool calls, ...).

``VERIFIERS`` maps a name to a *factory*: a callable that takes the verifier's options as keyword arguments
and returns a verifier (a verifier class with keyword-only fields is its own factory). Rows of a dataset
name their verifier; ``make_verifier`` builds one::

    verify = make_verifier("math", feedback="oracle", timeout_s=2.0)
    verify(r"... so the answer is \\boxed{\\frac{1}{2}}", "0.5")  # Verdict(score=1.0, correct=True, ...)

A plain verifier function with no options registers through a factory: ``VERIFIERS.add("x", lambda: fn)``.
Verifiers that can check many completions faster than one by one (the math verifier runs math-verify in a
process pool) also offer ``verify_batch``; ``verify_batch(verifier, ...)`` below uses it when present.

Model output can never fail a batch: ``verify_batch`` (the path training, evaluation and the TRL adapter take)
turns an exception raised while checking a completion into a wrong verdict whose feedback says the answer
could not be checked (``safe_verdict``). Two kinds of error still raise, because no completion causes them:
``VerifierUnavailableError`` (a missing dependency, a misuse) and a ground truth the verifier cannot read
(found by checking an empty completion against the same ground truth).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opdkit.core.registry import Registry

log = logging.getLogger("opdkit.rewards")
UNCHECKABLE_FEEDBACK = (
    "Your answer could not be checked ({error}). Give one short final answer in the requested format."
)


class VerifierUnavailableError(RuntimeError):
    """The verifier cannot run at all (a missing dependency, a misuse): raised, never made a verdict."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one completion.

    score: the reward (1.0 / 0.0 for every verifier of the papers).
    correct: whether the completion counts as a success.
    pred: the extracted answer, used for majority voting (maj@k); None when nothing could be extracted.
    feedback: natural-language feedback for a self-teacher (docs/algorithms.md §4.3); "" when there is none.
    """

    score: float
    correct: bool
    pred: str | None
    feedback: str = ""


class Verifier(Protocol):
    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict: ...


VerifierFactory = Callable[..., Verifier]
"""``factory(**options) -> Verifier``; what ``VERIFIERS`` holds."""

VERIFIERS: Registry[VerifierFactory] = Registry("verifier")


def make_verifier(name: str, **options: Any) -> Verifier:
    """Build the verifier registered as ``name`` with ``options``.

    An unknown name raises ``UnknownNameError`` listing the valid names; an unknown option raises
    ``TypeError`` listing the options that verifier accepts.
    """
    factory = VERIFIERS.get(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: let the call decide
        return factory(**options)
    try:
        signature.bind(**options)
    except TypeError:
        valid = [
            p for p, v in signature.parameters.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)
        ]
        accepted = ", ".join(valid) or "none"
        raise TypeError(
            f"verifier {name!r} does not accept options {sorted(options)}; valid options: {accepted}"
        ) from None
    return factory(**options)


def safe_verdict(verifier: Verifier, completion: str, ground_truth: str, truncated: bool = False) -> Verdict:
    """``verifier(completion, ground_truth, truncated=...)``, with an exception turned into a wrong verdict.

    The feedback names the exception type (not its message, which may quote the whole completion). Raises
    ``VerifierUnavailableError`` as is, and the ground truth's error when the ground truth is at fault (the
    verifier also fails on an empty completion).
    """
    try:
        return verifier(completion, ground_truth, truncated=truncated)
    except VerifierUnavailableError:
        raise
    except Exception as exc:
        try:
            verifier("", ground_truth, truncated=False)
        except Exception as data_error:  # the ground truth is bad: a data error, not a verdict
            raise data_error from exc
        log.warning("a completion could not be verified (%s); counted as wrong", type(exc).__name__)
        return Verdict(0.0, False, None, UNCHECKABLE_FEEDBACK.format(error=type(exc).__name__))


def verify_batch(
    verifier: Verifier,
    completions: Sequence[str],
    ground_truths: Sequence[str],
    truncated: Sequence[bool] | None = None,
) -> list[Verdict]:
    """Check ``completions[i]`` against ``ground_truths[i]`` for every i, in order.

    Uses ``verifier.verify_batch`` when the verifier has one (it may work in parallel), else calls it per row.
    If the batch method raises, every row is checked alone with ``safe_verdict``, so a completion that
    breaks its verifier gets a wrong verdict and the other rows keep theirs.
    """
    if len(completions) != len(ground_truths):
        raise ValueError(f"{len(completions)} completions but {len(ground_truths)} ground truths")
    flags = [False] * len(completions) if truncated is None else list(truncated)
    if len(flags) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(flags)} truncation flags")
    batch = getattr(verifier, "verify_batch", None)
    if batch is not None:
        try:
            return list(batch(completions, ground_truths, flags))
        except VerifierUnavailableError:
            raise
        except Exception:  # one row broke the batch: check each row alone (below)
            pass
    return [safe_verdict(verifier, c, g, t) for c, g, t in zip(completions, ground_truths, flags)]
