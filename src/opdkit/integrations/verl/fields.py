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

Every formula is ``opdkit.core.composition``'s, the same functions the opdkit trainer's methods call
(``tests/train/test_trainer_verl_parity.py`` checks both give equal weights). This module imports torch and
opdkit.core only; the verl glue lives in ``trainer.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from opdkit.core.composition import (
    QuestionWeightInputs,
    ScopeSwitches,
    question_pass_rates,
    question_weights,
    scope_mle_scale,
    scope_path_weights,
    success_from_rewards,
)
from opdkit.core.registry import Registry
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
class DriverBatch:
    """The step batch as verl's driver sees it (N sequences, T = longest response, right-padded).

    rewards_N: outcome reward per sequence (verl: ``rm_scores`` summed over tokens).
    group_ids_N: int64 group id per sequence (``group_ids_from_uids(uid)``).
    mask_N_T: response mask. old_logp_N_T: the pre-update student's log-probs (verl ``old_log_probs``).
    teacher_logp_N_T: teacher log-probs of the sampled tokens, or None when the weighting needs none.
    teacher_valid_N: bool, the rows whose teacher scores arrived; None = the rows whose teacher log-probs are
    finite on every response token (``core.composition.rows_with_teacher_scores``).
    """

    rewards_N: torch.Tensor
    group_ids_N: torch.Tensor
    mask_N_T: torch.Tensor
    old_logp_N_T: torch.Tensor | None = None
    teacher_logp_N_T: torch.Tensor | None = None
    teacher_valid_N: torch.Tensor | None = None


@dataclass(frozen=True)
class StepWeights:
    """Per-sequence fields to write into the batch (name -> (N,) float32) and driver metrics."""

    fields_N: dict[str, torch.Tensor]
    metrics: dict[str, float]


WEIGHTINGS: Registry[Callable[[DriverBatch, OpdkitVerlParams], StepWeights]] = Registry("verl weighting")

#: What each weighting needs from the batch besides rewards, uids and the response mask.
NEEDS_OLD_LOGP = {"scope"}
NEEDS_TEACHER = {"scope"}


def _success(step: DriverBatch, params: OpdkitVerlParams) -> torch.Tensor:
    # verl hands the driver a reward, not the verifier's verdict: the threshold rule (§1.4)
    return success_from_rewards(step.rewards_N, threshold=params.success_threshold)


def _question_step_weights(step: DriverBatch, params: OpdkitVerlParams, weighting: str) -> StepWeights:
    """The question weighting ``weighting`` (a name in ``core.composition.QUESTION_WEIGHTINGS``) over the
    whole step batch, one value per sequence, and its per-question metrics."""
    success_N = _success(step, params)
    inputs = QuestionWeightInputs(success_N, step.group_ids_N, alpha=params.sc_alpha)
    w_N = question_weights(weighting, inputs)
    rates = question_pass_rates(success_N, step.group_ids_N)
    w_Q, informative_Q = rates.per_question(w_N), rates.informative_Q
    metrics = {
        "opdkit/q_weight_mean": float(w_Q.mean()),
        "opdkit/q_weight_max": float(w_Q.max()),
        "opdkit/informative_question_fraction": float(informative_Q.float().mean()),
        # §6.3: with no informative question every weight is 0, so the update is a no-op gradient.
        "opdkit/empty_batch": float(not bool(informative_Q.any())),
    }
    return StepWeights(fields_N={FIELD_Q_WEIGHT: w_N}, metrics=metrics)


@WEIGHTINGS.register("pass_rate")
def pass_rate_step_weights(step: DriverBatch, params: OpdkitVerlParams) -> StepWeights:
    """SC-SDPO question weights over the whole step batch (§6.1), broadcast to each question's sequences."""
    return _question_step_weights(step, params, "pass_rate")


@WEIGHTINGS.register("hard_filter")
def hard_filter_step_weights(step: DriverBatch, params: OpdkitVerlParams) -> StepWeights:
    """Hard filter 1[0 < p < 1] (§6.4), broadcast to each question's sequences."""
    return _question_step_weights(step, params, "hard_filter")


def scope_switches(params: OpdkitVerlParams) -> ScopeSwitches:
    """``algorithm.opdkit``'s SCOPE keys as ``core.composition`` takes them (verl runs the dual path)."""
    return ScopeSwitches(
        tau=params.scope_tau,
        student_exponent=params.scope_student_exponent,
        teacher_exponent=params.scope_teacher_exponent,
        normalization=params.scope_normalization,
        use_student_weights=params.scope_use_student_weights,
        use_teacher_weights=params.scope_use_teacher_weights,
    )


@WEIGHTINGS.register("scope")
def scope_step_weights(step: DriverBatch, params: OpdkitVerlParams) -> StepWeights:
    """SCOPE dual-path weights from whole groups (``core.composition.scope_path_weights``, §5.3-§5.7) and the
    MLE scale (``scope_mle_scale``). Rows whose teacher scores never arrived get weight 0 (§5.7)."""
    if step.old_logp_N_T is None or step.teacher_logp_N_T is None:
        raise ValueError("the scope weighting needs old_log_probs and teacher_logprobs in the batch")
    paths = scope_path_weights(
        step.old_logp_N_T, step.teacher_logp_N_T, step.mask_N_T, _success(step, params), step.group_ids_N,
        valid_N=step.teacher_valid_N, switches=scope_switches(params),
    )  # fmt: skip
    correct_N, student_N, teacher_N = paths.correct_N, paths.weights.student_N, paths.weights.teacher_N
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
        "opdkit/scope_teacher_valid_fraction": float(paths.valid_N.float().mean()),
    }
    return StepWeights(fields_N=fields, metrics=metrics)


def step_weights(step: DriverBatch, params: OpdkitVerlParams) -> StepWeights:
    """Dispatch on ``params.weighting`` (not for "none", which writes nothing)."""
    return WEIGHTINGS.get(params.weighting)(step, params)
