"""Driver-side weights: what the ``opdkit_sync`` trainer computes over the WHOLE step batch before the update.

Group-level weights need every member of every group, which only the driver sees: verl's workers get
shuffled micro-batches. So the trainer calls one of these functions on the step batch (padded tensors) and
writes the per-sequence results into the batch as per-token fields (``params.FIELD_*``); the loss functions
on the workers only multiply by them.

Weightings (chosen by ``algorithm.opdkit.weighting``, one registry):

- ``pass_rate`` (SC-SDPO, docs/algorithms.md §6.1): w_q = (p_q(1-p_q))^α normalised to mean 1 over the step's
  questions with 0 < p_q < 1, 0 elsewhere; each sequence gets its question's weight.
- ``hard_filter`` (§6.4): w_q = 1[0 < p_q < 1].
- ``scope`` (§5.3-§5.5): SCOPE's dual-path weights from the mean token log-probs of the pre-update student
  (verl's ``old_log_probs``) and of the teacher, plus the factor that lets one token-mean over all tokens
  reproduce the reference's two token-means (``scope_mle_scale``).

This module imports torch and opdkit.core only; the verl glue lives in ``trainer.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from opdkit.core.groups import group_index, group_mean, sequence_mean
from opdkit.core.registry import Registry
from opdkit.core.weights import hard_filter_weights, pass_rate_weights, scope_weights
from opdkit.integrations.verl.params import (
    FIELD_CORRECT,
    FIELD_MLE_SCALE,
    FIELD_Q_WEIGHT,
    FIELD_W_STUDENT,
    FIELD_W_TEACHER,
    OpdkitVerlParams,
)


def group_ids_from_uids(uids: Sequence[object]) -> torch.Tensor:
    """verl's ``uid`` (one string or number per sequence) -> int64 group ids, numbered by first appearance."""
    numbering: dict[object, int] = {}
    return torch.tensor([numbering.setdefault(uid, len(numbering)) for uid in uids], dtype=torch.int64)


@dataclass(frozen=True)
class StepBatch:
    """The step batch as the driver sees it (N sequences, T = longest response, right-padded).

    rewards_N: outcome reward per sequence (verl: ``rm_scores`` summed over tokens).
    group_ids_N: int64 group id per sequence (``group_ids_from_uids(uid)``).
    mask_N_T: response mask. old_logp_N_T: the pre-update student's log-probs (verl ``old_log_probs``).
    teacher_logp_N_T: teacher log-probs of the sampled tokens, or None when the weighting needs none.
    """

    rewards_N: torch.Tensor
    group_ids_N: torch.Tensor
    mask_N_T: torch.Tensor
    old_logp_N_T: torch.Tensor | None = None
    teacher_logp_N_T: torch.Tensor | None = None


@dataclass(frozen=True)
class StepWeights:
    """Per-sequence fields to write into the batch (name -> (N,) float32) and driver metrics."""

    fields_N: dict[str, torch.Tensor]
    metrics: dict[str, float]


WEIGHTINGS: Registry[Callable[[StepBatch, OpdkitVerlParams], StepWeights]] = Registry("verl weighting")

#: What each weighting needs from the batch besides rewards, uids and the response mask.
NEEDS_OLD_LOGP = {"scope"}
NEEDS_TEACHER = {"scope"}


def _success(step: StepBatch, params: OpdkitVerlParams) -> torch.Tensor:
    return step.rewards_N.to(torch.float32) >= params.success_threshold  # §1.4


def _question_pass_rates(step: StepBatch, params: OpdkitVerlParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(pass rate per question (Q,), dense question index per sequence (N,)) — one entry per question so that
    the SC normalisation averages over questions, not rollouts (§6.1)."""
    idx = group_index(step.group_ids_N)
    return group_mean(_success(step, params).to(torch.float32), idx), idx.inverse_N


def _question_weight_fields(w_Q: torch.Tensor, p_Q: torch.Tensor, inverse_N: torch.Tensor) -> StepWeights:
    informative_Q = (p_Q > 0) & (p_Q < 1)
    metrics = {
        "opdkit/q_weight_mean": float(w_Q.mean()),
        "opdkit/q_weight_max": float(w_Q.max()),
        "opdkit/informative_question_fraction": float(informative_Q.float().mean()),
        # §6.3: with no informative question every weight is 0, so the update is a no-op gradient.
        "opdkit/empty_batch": float(not bool(informative_Q.any())),
    }
    return StepWeights(fields_N={FIELD_Q_WEIGHT: w_Q[inverse_N]}, metrics=metrics)


@WEIGHTINGS.register("pass_rate")
def pass_rate_step_weights(step: StepBatch, params: OpdkitVerlParams) -> StepWeights:
    """SC-SDPO question weights over the whole step batch (§6.1), broadcast to each question's sequences."""
    p_Q, inverse_N = _question_pass_rates(step, params)
    return _question_weight_fields(pass_rate_weights(p_Q, alpha=params.sc_alpha), p_Q, inverse_N)


@WEIGHTINGS.register("hard_filter")
def hard_filter_step_weights(step: StepBatch, params: OpdkitVerlParams) -> StepWeights:
    """Hard filter 1[0 < p < 1] (§6.4), broadcast to each question's sequences."""
    p_Q, inverse_N = _question_pass_rates(step, params)
    return _question_weight_fields(hard_filter_weights(p_Q), p_Q, inverse_N)


def scope_mle_scale(mask_N_T: torch.Tensor, correct_N: torch.Tensor, agg: str) -> float:
    """Factor on the correct rows' per-token MLE loss so that ONE token-mean over all valid tokens equals
    SCOPE's L_PG + L_MLE (§5.5).

    "code": L_MLE divides by the correct rows' token count C, verl's token-mean by all tokens A, so the
    factor is A / C (1 when C = 0: the term is empty anyway). "joint": one token-mean already, factor 1.
    Counts are the step batch's; they are exact for the update when the PPO mini-batch is the step batch
    (SCOPE's setting, docs/algorithms.md §10.4) and the step's ratio otherwise.
    """
    if agg == "joint":
        return 1.0
    mask = mask_N_T.to(torch.bool)
    all_tokens = float(mask.sum())
    correct_tokens = float((mask & correct_N.to(torch.bool).unsqueeze(-1)).sum())
    return all_tokens / correct_tokens if correct_tokens > 0 else 1.0


@WEIGHTINGS.register("scope")
def scope_step_weights(step: StepBatch, params: OpdkitVerlParams) -> StepWeights:
    """SCOPE dual-path weights from whole groups (§5.3-§5.4) and the MLE scale (``scope_mle_scale``)."""
    if step.old_logp_N_T is None or step.teacher_logp_N_T is None:
        raise ValueError("the scope weighting needs old_log_probs and teacher_logprobs in the batch")
    correct_N = _success(step, params)
    weights = scope_weights(
        sequence_mean(step.old_logp_N_T.to(torch.float32), step.mask_N_T),  # ℓS, §5.3
        sequence_mean(step.teacher_logp_N_T.to(torch.float32), step.mask_N_T),  # ℓT
        correct_N,
        step.group_ids_N,
        tau=params.scope_tau,
        student_exponent=params.scope_student_exponent,
        teacher_exponent=params.scope_teacher_exponent,
        normalization=params.scope_normalization,
    )
    student_N, teacher_N = weights.student_N, weights.teacher_N
    if not params.scope_use_student_weights:  # §5.6 ablation: MLE path on, unweighted
        student_N = correct_N.to(torch.float32)
    if not params.scope_use_teacher_weights:
        teacher_N = (~correct_N).to(torch.float32)
    scale = scope_mle_scale(step.mask_N_T, correct_N, params.scope_agg)
    n = correct_N.numel()
    fields = {
        FIELD_W_STUDENT: student_N,
        FIELD_W_TEACHER: teacher_N,
        FIELD_CORRECT: correct_N.to(torch.float32),
        FIELD_MLE_SCALE: torch.full((n,), scale, dtype=torch.float32),
    }
    metrics = {
        "opdkit/scope_correct_fraction": float(correct_N.float().mean()),
        "opdkit/scope_student_weight_max": float(student_N.max()),
        "opdkit/scope_teacher_weight_max": float(teacher_N.max()),
        "opdkit/scope_mle_scale": scale,
    }
    return StepWeights(fields_N=fields, metrics=metrics)


def step_weights(step: StepBatch, params: OpdkitVerlParams) -> StepWeights:
    """Dispatch on ``params.weighting`` (not for "none", which writes nothing)."""
    return WEIGHTINGS.get(params.weighting)(step, params)
