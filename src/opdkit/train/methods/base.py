"""What a method is: a config section, a no-grad ``prepare`` and a ``loss`` over (micro-)batches.

The loop calls, per step::

    prepared = method.prepare(cfg, batch, ctx)                  # advantages, weights, teacher scores
    for each mini-batch (one optimizer update):
        denoms = method.denominators(cfg, mini, prepared_mini)  # whole-mini-batch loss denominators
        for each micro-batch:
            method.loss(cfg, micro, prepared_micro, denoms, ctx).loss.backward()

so a method is a composition of ``opdkit.core`` functions and nothing else. Methods register an instance
in ``METHODS`` under their name; their config dataclass has a ``name`` field and the papers' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from opdkit.core.losses import LossOutput
from opdkit.train.batch import Prepared, StepBatch


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config section."""

    name: str = field(default="grpo", metadata={"help": "the method (see `opdkit methods`)"})


@dataclass
class MethodContext:
    """What the loop hands to methods: models, tokenizer, teachers and run-level settings.

    temperature: the log-prob temperature (student and teacher scoring, §11 A4).
    teacher: an external ``Teacher`` (opd, scope) or None. self_teacher: the self-teacher's weights object
    (``teachers.self_teacher.make_teacher_weights``) or None. paced_weights_D: PACED's frozen weight of each
    training example (set by the method's ``setup``).
    """

    student: torch.nn.Module
    tokenizer: Any
    temperature: float
    hidden_states: bool = True  # losses from hidden states in token chunks (``model.hidden_state_losses``)
    teacher: Any = None
    self_teacher: Any = None
    self_teacher_options: Any = None
    chat_kwargs: dict = field(default_factory=dict)
    paced_weights_D: torch.Tensor | None = None
    estimate_pass_rates: Any = None  # callable(n_samples, temperature) -> Tensor[D]; for PACED's setup


class Method:
    """Base class: subclasses set ``config_type`` and implement ``prepare``/``denominators``/``loss``."""

    config_type: type = MethodConfig
    uses_teacher: bool = False
    uses_self_teacher: bool = False
    description: str = ""
    # rollouts per question the method needs: 2 where a rollout is compared with its group's siblings
    # (group-normalised advantages, pass-rate weights, sibling demonstrations); checked at config load
    min_group_size: int = 1

    def needs_old_logp(self, cfg: Any) -> bool:
        """Whether ``prepare`` or an on-policy ``loss`` needs ``batch.old_logp_N_T``.

        False lets the loop skip the old-log-prob forward when a step makes one optimizer update (the loss
        then uses the current log-probs, detached: ``batch.old_or_current``). True by default (always safe).
        """
        return True

    def setup(self, cfg: Any, ctx: MethodContext) -> None:
        """Called once before training (e.g. PACED's offline pass rates); nothing by default."""

    def prepare(self, cfg: Any, batch: StepBatch, ctx: MethodContext) -> Prepared:
        raise NotImplementedError

    def denominators(self, cfg: Any, batch: StepBatch, prepared: Prepared) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(
        self,
        cfg: Any,
        batch: StepBatch,
        prepared: Prepared,
        denoms: dict[str, torch.Tensor],
        ctx: MethodContext,
    ) -> LossOutput:
        raise NotImplementedError


def weight_stats(prefix: str, w_N: torch.Tensor, on_N: torch.Tensor) -> dict[str, float]:
    """mean/std/min/max of the weights on the rows where ``on_N`` holds (empty -> no keys)."""
    w = w_N[on_N.to(torch.bool)].float()
    if w.numel() == 0:
        return {}
    return {
        f"{prefix}_mean": float(w.mean()),
        f"{prefix}_std": float(w.std(unbiased=False)),
        f"{prefix}_min": float(w.min()),
        f"{prefix}_max": float(w.max()),
    }
