"""Any opdkit verifier as a TRL reward function: ``f(completions, **columns) -> list[float]``.

TRL's trainers (GRPO, SDPO, ...) call each reward function with the batch's completions and every dataset
column as keyword arguments, and read ``f.__name__`` for logging. This adapter

- accepts plain-text completions or conversational ones (a list of ``{"role", "content"}`` messages: the
  last message's content is checked);
- takes the ground truth from the first present column among ``solution``, ``ground_truth``, ``answer``;
- returns the verdicts' scores (the math verifier checks the batch in parallel).

Example::

    from trl import GRPOTrainer
    trainer = GRPOTrainer(model=..., reward_funcs=[trl_reward("math")], train_dataset=dataset)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opdkit.rewards.base import Verifier, make_verifier, verify_batch

GROUND_TRUTH_COLUMNS = ("solution", "ground_truth", "answer")


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or the content of the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
    raise TypeError(f"a completion must be a string or a list of chat messages, got {completion!r}"[:200])


def _ground_truths(columns: dict[str, Any], n: int) -> list[str]:
    for name in GROUND_TRUTH_COLUMNS:
        if name in columns and columns[name] is not None:
            values = list(columns[name])
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
            return [str(v) for v in values]
    expected, got = ", ".join(GROUND_TRUTH_COLUMNS), ", ".join(sorted(columns)) or "none"
    raise ValueError(f"no ground-truth column: expected one of {expected}; got columns {got}")


def trl_reward(
    verifier: Verifier | str, *, name: str | None = None, **options: Any
) -> Callable[..., list[float]]:
    """Wrap ``verifier`` (or the registered verifier called ``verifier``, built with ``options``) for TRL."""
    if isinstance(verifier, str):
        label = name or f"{verifier}_reward"
        verifier = make_verifier(verifier, **options)
    elif options:
        raise TypeError("options are only accepted with a verifier name")
    else:
        label = name or f"{type(verifier).__name__}_reward"

    def reward(completions: Sequence[Any], **columns: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        verdicts = verify_batch(verifier, texts, _ground_truths(columns, len(texts)))
        return [v.score for v in verdicts]

    reward.__name__ = reward.__qualname__ = label
    return reward
