"""Driver-side fields of the SDPO family: what the ``opdkit_sdpo`` trainer writes into the step batch.

From the step's rollouts (``teacher_context.StepRollouts``) and teacher inputs (``TeacherInputs``), over the
WHOLE step batch (never per micro-batch or per rank), with ``opdkit.core.composition``'s functions, the ones
``opdkit train`` calls (the SDPO variants are registered from the trainer's own table, ``SDPO_VARIANTS``):

- every method: the self-distillation mask per row (``FIELD_SD_MASK``; SRPO: its routing ``FIELD_SDPO_ROUTE``
  = failed with a correct sibling, ∧ has a teacher context);
- ``sc_sdpo``: w_q = ``pass_rate_weights`` (p_q(1−p_q))^α with mean 1 over the step's informative
  questions; ``sdpo_hard_filter``: ``hard_filter_weights``; ``sdpo_paced``: the row's frozen PACED weight
  (``paced_weights`` over the training set, computed once before training and stored in each row's
  ``extra_info.opdkit_paced_weight``); ``sdpo``: none (``FIELD_Q_WEIGHT`` absent);
- ``srpo``: the GRPO branch's whole-group advantage (``grpo_advantages``, std normalisation off by default)
  and the entropy weights exp(−βH_T)/mean over the step's SDPO-routed tokens (``entropy_weights``), H_T the
  self-teacher's entropy on its context (the ref worker's ``calculate_entropy`` pass).

Each value is per row (N,) (or (N, T) for the entropy weight); the trainer writes them as per-token fields.
No verl import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from opdkit.core.advantages import grpo_advantages
from opdkit.core.composition import (
    QuestionWeightInputs,
    question_weights,
    srpo_entropy_weights,
    success_from_rewards,
)
from opdkit.core.registry import Registry
from opdkit.core.weights import srpo_routing
from opdkit.integrations.verl.params import FIELD_Q_WEIGHT
from opdkit.integrations.verl.sdpo_loss import (
    FIELD_ADVANTAGE,
    FIELD_ENTROPY_WEIGHT,
    FIELD_SD_MASK,
    FIELD_SDPO_ROUTE,
)
from opdkit.integrations.verl.teacher_context import StepRollouts, TeacherInputs
from opdkit.train.methods.sdpo import SDPO_VARIANTS

PACED_KEY = "opdkit_paced_weight"  # extra_info key of a row's frozen PACED weight


@dataclass(frozen=True)
class SelfDistillSettings:
    """The driver's settings (``algorithm.opdkit.self_distillation`` of the launch command).

    method: sdpo | sc_sdpo | sdpo_hard_filter | sdpo_paced | srpo. success_threshold: c_i = 1[r_i >= it].
    sc_alpha: SC-SDPO's α. srpo_normalize_std, srpo_eps, srpo_beta: SRPO's GRPO branch and entropy weight.
    """

    method: str = "sdpo"
    success_threshold: float = 0.5
    sc_alpha: float = 0.5
    srpo_normalize_std: bool = False
    srpo_eps: float = 1e-6
    srpo_beta: float = 1.0


@dataclass(frozen=True)
class SelfDistillFields:
    """Per-row fields (name -> (N,) float32), per-token fields (name -> (N, T)) and driver metrics."""

    rows_N: dict[str, torch.Tensor]
    tokens_N_T: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepInputs:
    """What a method's field function reads: the rollouts, the teacher inputs, per-row PACED weights (or
    None), the response mask (N, T) and, for SRPO, the teacher's entropy (N, T) on its context."""

    rollouts: StepRollouts
    teacher: TeacherInputs
    mask_N_T: torch.Tensor
    paced_weight_N: torch.Tensor | None = None
    teacher_entropy_N_T: torch.Tensor | None = None


FieldFn = Callable[[StepInputs, SelfDistillSettings], SelfDistillFields]
SELF_DISTILL_FIELDS: Registry[FieldFn] = Registry("verl self-distillation method")


def _success_N(inputs: StepInputs, settings: SelfDistillSettings) -> torch.Tensor:
    return success_from_rewards(inputs.rollouts.rewards_N, threshold=settings.success_threshold)


def _group_ids_N(inputs: StepInputs) -> torch.Tensor:
    return torch.tensor(inputs.rollouts.texts.group_ids, dtype=torch.int64)


def _with_weight(inputs: StepInputs, weight_N: torch.Tensor | None) -> SelfDistillFields:
    rows = {FIELD_SD_MASK: inputs.teacher.sd_mask_N.float()}
    metrics = {f"opdkit/sdpo_{k}": v for k, v in inputs.teacher.stats.items()}
    if weight_N is not None:
        rows[FIELD_Q_WEIGHT] = weight_N.float()
        metrics["opdkit/q_weight_nonzero_fraction"] = float((weight_N > 0).float().mean())
    return SelfDistillFields(rows_N=rows, metrics=metrics)


@SELF_DISTILL_FIELDS.register("sdpo")
def sdpo_fields(inputs: StepInputs, settings: SelfDistillSettings) -> SelfDistillFields:
    return _with_weight(inputs, None)


def _question_weighted(weighting: str) -> FieldFn:
    """The fields of an SDPO variant: the sd mask and ``core.composition``'s question weight ``weighting``
    over the whole step (the same function and registry entry as ``opdkit train``'s variant)."""

    def fields(inputs: StepInputs, settings: SelfDistillSettings) -> SelfDistillFields:
        n = len(inputs.rollouts.rewards_N)
        paced = inputs.paced_weight_N
        if weighting == "paced" and paced is None:
            raise KeyError(f"sdpo_paced needs each row's frozen weight in extra_info.{PACED_KEY}")
        weight_inputs = QuestionWeightInputs(
            success_N=_success_N(inputs, settings),
            group_ids_N=_group_ids_N(inputs),
            example_index_N=torch.arange(n),  # PACED's frozen weights arrive per row
            offline_weights_D=paced,
            alpha=settings.sc_alpha,
        )
        return _with_weight(inputs, question_weights(weighting, weight_inputs))

    return fields


for _variant in SDPO_VARIANTS:  # sc_sdpo, sdpo_hard_filter, sdpo_paced: the trainer's own table
    SELF_DISTILL_FIELDS.add(_variant.name, _question_weighted(_variant.weighting))


@SELF_DISTILL_FIELDS.register("srpo")
def srpo_fields(inputs: StepInputs, settings: SelfDistillSettings) -> SelfDistillFields:
    if inputs.teacher_entropy_N_T is None:
        raise ValueError("srpo needs the self-teacher's entropy on its context (the ref worker's pass)")
    success_N, group_ids_N = _success_N(inputs, settings), _group_ids_N(inputs)
    sdpo_N = srpo_routing(success_N, group_ids_N, context_N=inputs.teacher.sd_mask_N).sdpo_N
    adv_N = grpo_advantages(
        inputs.rollouts.rewards_N,
        group_ids_N,
        normalize_std=settings.srpo_normalize_std,
        eps=settings.srpo_eps,
    )
    weight_N_T = srpo_entropy_weights(
        inputs.teacher_entropy_N_T, inputs.mask_N_T, sdpo_N, beta=settings.srpo_beta
    )
    return SelfDistillFields(
        rows_N={FIELD_SDPO_ROUTE: sdpo_N.float(), FIELD_ADVANTAGE: adv_N.float()},
        tokens_N_T={FIELD_ENTROPY_WEIGHT: weight_N_T},
        metrics={"opdkit/srpo_sdpo_fraction": float(sdpo_N.float().mean())},
    )


def self_distill_fields(inputs: StepInputs, settings: SelfDistillSettings) -> SelfDistillFields:
    """Dispatch on ``settings.method``."""
    return SELF_DISTILL_FIELDS.get(settings.method)(inputs, settings)
