"""What a method is: a config section, a no-grad ``prepare`` and one ``loss`` body over micro-batches.

The update step calls, per step (``train.update.run_updates``)::

    prepared = method.prepare(cfg, batch, ctx)      # advantages, weights, teacher scores: Prepared[Rows]
    for each mini-batch (one optimizer update):
        rows = prepared.rows.select(mini_rows)
        denoms = method.denominators(cfg, mini, rows)   # whole-mini-batch loss denominators
        for each micro-batch:
            out = ctx.forward.student(ctx.student, micro.sequences(), ctx.temperature)  # the one forward
            method.loss(cfg, micro, rows.select(micro_rows), denoms, out, ctx).loss.backward()

``prepare`` hands its per-row tensors to ``loss`` in a frozen dataclass of its own (a ``batch.Rows``:
``PolicyRows``, ``ScopeRows``, ``SdpoRows``, ``SrpoRows``), which the update step slices with the batch by
the one generic ``Rows.select``. The student's forward runs once per micro-batch, on the path the run chose
when it started (``ctx.forward``: hidden states for ``core.chunked`` or full logits, ``train.student``); the
loss reads the sampled tokens' log-probs from ``out.logp_N_T`` and runs a distillation term through
``ctx.forward.self_teacher`` and ``ctx.forward.distill``, so the same loss body serves both paths. A method
is a composition of ``opdkit.core`` functions and nothing else. Methods register an instance in ``METHODS``
under their name; their config dataclass has a ``name`` field and the papers' defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic

import torch

from opdkit.core.losses import LossOutput
from opdkit.teachers.base import Teacher
from opdkit.teachers.self_teacher import SelfTeacherOptions, TeacherWeights
from opdkit.train.batch import Prepared, R, StepBatch
from opdkit.train.student import ForwardPath, StudentOutput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config section."""

    name: str = field(default="grpo", metadata={"help": "the method (see `opdkit methods`)"})


@dataclass
class MethodContext:
    """What the loop hands to methods: models, tokenizer, teachers and run-level settings.

    temperature: the log-prob temperature (student and teacher scoring, §11 A4).
    forward: the run's forward path (``train.student.choose_forward``, chosen when the run starts).
    teacher: an external ``Teacher`` (opd, scope) or None. self_teacher: the self-teacher's weights
    (``teachers.self_teacher.make_teacher_weights``) or None. paced_weights_D: PACED's frozen weight of each
    training example (set by the method's ``setup``). estimate_pass_rates: ``(n_samples, temperature) ->
    pass rate of each training example (D,)`` for PACED's ``setup``.
    """

    student: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    temperature: float
    forward: ForwardPath
    teacher: Teacher | None = None
    self_teacher: TeacherWeights | None = None
    self_teacher_options: SelfTeacherOptions | None = None
    chat_kwargs: dict = field(default_factory=dict)
    paced_weights_D: torch.Tensor | None = None
    estimate_pass_rates: Callable[[int, float], torch.Tensor] | None = None


class Method(Generic[R]):
    """Base class: subclasses set ``config_type`` and implement ``prepare``/``denominators``/``loss``; ``R``
    is the method's ``Rows`` dataclass."""

    config_type: type = MethodConfig
    uses_teacher: bool = False
    uses_self_teacher: bool = False
    description: str = ""
    # rollouts per question the method needs: 2 where a rollout is compared with its group's siblings
    # (group-normalised advantages, pass-rate weights, sibling demonstrations); checked at config load
    min_group_size: int = 1

    def needs_old_logp(self, cfg: MethodConfig) -> bool:
        """Whether ``prepare`` or an on-policy ``loss`` needs ``batch.old_logp_N_T``.

        False lets the loop skip the old-log-prob forward when a step makes one optimizer update (the loss
        then uses the current log-probs, detached: ``batch.old_or_current``). True by default (always safe).
        """
        return True

    def setup(self, cfg: MethodConfig, ctx: MethodContext) -> None:
        """Called once before training (e.g. PACED's offline pass rates); nothing by default."""

    def hidden_state_loss(self, cfg: MethodConfig) -> bool:
        """Whether the loss can run on hidden states (``core.chunked``); False asks the run for full logits
        (e.g. SDPO's sampled-token surrogate). Read once, when the run chooses its forward path."""
        return True

    def prepare(self, cfg: MethodConfig, batch: StepBatch, ctx: MethodContext) -> Prepared[R]:
        raise NotImplementedError

    def denominators(self, cfg: MethodConfig, batch: StepBatch, rows: R) -> dict[str, torch.Tensor]:
        """Loss denominators of the whole mini-batch ``batch`` (so micro-batch losses sum to its loss)."""
        raise NotImplementedError

    def loss(
        self,
        cfg: MethodConfig,
        batch: StepBatch,
        rows: R,
        denoms: dict[str, torch.Tensor],
        out: StudentOutput,
        ctx: MethodContext,
    ) -> LossOutput:
        """The loss of one micro-batch ``batch`` from the student's output ``out`` on it (either path)."""
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
