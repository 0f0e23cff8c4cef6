"""Verifiers: reward, extracted answer and feedback for one completion (docs/algorithms.md §9).

Registered verifiers (``VERIFIERS``; build one with ``make_verifier(name, **options)``):

| name | checks | options |
|---|---|---|
| ``math`` | last ``\\boxed{}``, normalised compare, math-verify in worker processes (§9.1) | see below |
| ``mcq`` | option letter in the last ``<answer>`` tag (§9.2) | none |
| ``toolcall`` | ``Action:`` multiset and merged ``Action Input:`` JSON (§9.3, §9.4) | compat_regex |

``math`` options: feedback, timeout_s, workers, tail_chars, abs_tol (``MathVerifier``).

Limits that keep every check bounded whatever the model writes: answers over 10,000 characters are only
string-compared (``MathVerifier``/``normalize.MAX_NORMALIZE_CHARS``), numbers over 400 characters are not read
as numbers, math-verify runs in a worker process under ``timeout_s``, and the tool-call parser stops after
100 ``Action Input:`` markers that fail to decode (``extract.MAX_FAILED_INPUTS``). ``verify_batch`` turns an
exception raised by a completion into a wrong verdict with feedback (``safe_verdict``).

``trl_reward(name_or_verifier)`` turns any of them into a TRL reward function. Importing this package is
cheap: math-verify is only imported by the worker processes that run it.
"""

from opdkit.rewards import math_verifier, mcq, synthetic, toolcall  # noqa: F401  (register the verifiers)
from opdkit.rewards.base import (
    VERIFIERS,
    Verdict,
    Verifier,
    VerifierUnavailableError,
    make_verifier,
    safe_verdict,
    verify_batch,
)
from opdkit.rewards.math_verifier import MathVerifier
from opdkit.rewards.mcq import MultipleChoiceVerifier
from opdkit.rewards.toolcall import ToolCallVerifier
from opdkit.rewards.trl_adapter import trl_reward

__all__ = [
    "VERIFIERS",
    "MathVerifier",
    "MultipleChoiceVerifier",
    "ToolCallVerifier",
    "Verdict",
    "Verifier",
    "VerifierUnavailableError",
    "make_verifier",
    "safe_verdict",
    "trl_reward",
    "verify_batch",
]
