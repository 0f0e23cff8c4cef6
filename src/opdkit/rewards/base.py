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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opdkit.core.registry import Registry


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


def verify_batch(
    verifier: Verifier,
    completions: Sequence[str],
    ground_truths: Sequence[str],
    truncated: Sequence[bool] | None = None,
) -> list[Verdict]:
    """Check ``completions[i]`` against ``ground_truths[i]`` for every i, in order.

    Uses ``verifier.verify_batch`` when the verifier has one (it may work in parallel), else calls it per row.
    """
    if len(completions) != len(ground_truths):
        raise ValueError(f"{len(completions)} completions but {len(ground_truths)} ground truths")
    flags = [False] * len(completions) if truncated is None else list(truncated)
    if len(flags) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(flags)} truncation flags")
    batch = getattr(verifier, "verify_batch", None)
    if batch is not None:
        return list(batch(completions, ground_truths, flags))
    return [verifier(c, g, truncated=t) for c, g, t in zip(completions, ground_truths, flags)]
