"""The methods' combined objectives, built from ``losses`` and ``divergences``.

- SCOPE (docs/algorithms.md §5.5). Code path (``agg="code"``, the reference default)::

      A[i,t] = w_tea_i (logp_T − logp_old)[i,t] m[i,t]   on wrong rows;  A = 0 on correct rows
      L_PG   = token-mean over ALL valid tokens of the clipped surrogate with A
      L_MLE  = Σ_{correct} w_stu_i (−logp_θ) m / Σ_{correct} m
      loss   = L_PG + L_MLE

  ``agg="joint"``: one token-mean over the tokens of both paths,
  (Σ_wrong ℓ_PG m + Σ_correct w_stu (−logp_θ) m) / Σ m.
  Wrong rows whose teacher scores are missing (``teacher_valid_N`` False) are dropped from the loss and its
  denominators; correct rows never use the teacher, so they stay.
- Self-distillation (§4.7, §6.2): ℓ'[i,t] = w_q(i) · D[i,t] · IS[i,t], aggregated over the SDPO mask with
  SDPO's denominator; SC-SDPO, the hard filter and PACED only change the question weights w_q.
- SRPO (§7.4): one token-mean over the union of GRPO-routed and SDPO-routed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdkit.core.divergences import LOGP_FLOOR
from opdkit.core.losses import (
    LossOutput,
    aggregate,
    aggregation_denominator,
    clipped_surrogate,
    surrogate_metrics,
)
from opdkit.core.weights import ScopeWeights, SrpoRouting

SCOPE_AGGREGATIONS = ("code", "joint")


@dataclass(frozen=True)
class ClipConfig:
    """PPO clip settings (§2.2); SCOPE's reference uses 0.2/0.2, the SDPO-family baselines 0.2/0.28."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0


@dataclass(frozen=True)
class ScopeInputs:
    """Per-step tensors SCOPE's loss needs (N rows, T response tokens).

    logp_N_T: current student log-probs of the sampled tokens (with gradient).
    old_logp_N_T: the pre-update student's log-probs (detached; equal to logp on-policy).
    teacher_logp_N_T: teacher log-probs of the same tokens (NaN allowed on invalid rows).
    mask_N_T: response mask. correct_N: bool routing. teacher_valid_N: bool, rows with teacher scores.
    """

    logp_N_T: torch.Tensor
    old_logp_N_T: torch.Tensor
    teacher_logp_N_T: torch.Tensor
    mask_N_T: torch.Tensor
    correct_N: torch.Tensor
    teacher_valid_N: torch.Tensor | None = None


@dataclass(frozen=True)
class ScopeMasks:
    """Token masks of SCOPE's loss: ``pg_N_T`` all used tokens, ``mle_N_T`` the correct rows' tokens."""

    pg_N_T: torch.Tensor
    mle_N_T: torch.Tensor
    wrong_N_T: torch.Tensor


def scope_masks(inputs: ScopeInputs) -> ScopeMasks:
    """Masks of §5.5 after dropping wrong rows without teacher scores (computable before any forward)."""
    mask = inputs.mask_N_T.to(torch.bool)
    correct = inputs.correct_N.to(torch.bool)
    valid = (
        torch.ones_like(correct) if inputs.teacher_valid_N is None else inputs.teacher_valid_N.to(torch.bool)
    )
    wrong_ok = ~correct & valid
    return ScopeMasks(
        pg_N_T=mask & (correct | wrong_ok).unsqueeze(-1),
        mle_N_T=mask & correct.unsqueeze(-1),
        wrong_N_T=mask & wrong_ok.unsqueeze(-1),
    )


@dataclass(frozen=True)
class ScopeDenominators:
    """Whole-batch denominators so micro-batches sum to the full-batch loss (``scope_denominators``)."""

    pg: torch.Tensor
    mle: torch.Tensor


def scope_denominators(inputs: ScopeInputs) -> ScopeDenominators:
    masks = scope_masks(inputs)
    return ScopeDenominators(
        pg=aggregation_denominator(masks.pg_N_T, "token-mean"),
        mle=aggregation_denominator(masks.mle_N_T, "token-mean"),
    )


def scope_loss(
    inputs: ScopeInputs,
    weights: ScopeWeights,
    *,
    clip: ClipConfig = ClipConfig(clip_low=0.2, clip_high=0.2),
    agg: str = "code",
    denominators: ScopeDenominators | None = None,
) -> LossOutput:
    """SCOPE's loss (module docstring); metrics ``pg_loss``, ``mle_loss`` and the surrogate's clip stats."""
    if agg not in SCOPE_AGGREGATIONS:
        raise ValueError(f"unknown SCOPE aggregation {agg!r}; valid: {', '.join(SCOPE_AGGREGATIONS)}")
    masks = scope_masks(inputs)
    denominators = denominators or scope_denominators(inputs)
    teacher_N_T = inputs.teacher_logp_N_T.clamp(min=LOGP_FLOOR)  # §5.7: never −inf
    gap_N_T = torch.where(masks.wrong_N_T, teacher_N_T - inputs.old_logp_N_T, 0.0)
    adv_N_T = weights.teacher_N.unsqueeze(-1) * gap_N_T.detach()  # A = w_tea (logp_T − logp_old), §5.5
    sur = clipped_surrogate(
        inputs.logp_N_T, inputs.old_logp_N_T, adv_N_T,
        clip_low=clip.clip_low, clip_high=clip.clip_high, dual_clip=clip.dual_clip, mask_N_T=masks.pg_N_T,
    )  # fmt: skip
    mle_N_T = -weights.student_N.detach().unsqueeze(-1) * inputs.logp_N_T
    pg = aggregate(sur.loss_N_T, masks.pg_N_T, "token-mean", global_denominator=denominators.pg)
    if agg == "code":
        mle = aggregate(mle_N_T, masks.mle_N_T, "token-mean", global_denominator=denominators.mle)
        loss = pg + mle
    else:
        mle = aggregate(mle_N_T, masks.mle_N_T, "token-mean", global_denominator=denominators.pg)
        loss = pg + mle  # both over Σ m of the union: one token-mean
    per_token = torch.where(masks.mle_N_T, mle_N_T, sur.loss_N_T)
    metrics = surrogate_metrics(sur, inputs.logp_N_T, inputs.old_logp_N_T, masks.wrong_N_T)
    metrics.update(pg_loss=float(pg.detach()), mle_loss=float(mle.detach()))
    return LossOutput(loss=loss, per_token_N_T=per_token, metrics=metrics)


@dataclass(frozen=True)
class DistillAggregation:
    """How the self-distillation loss is reduced (§2.3, §11 A8): SDPO-family parity is
    ``seq-mean-token-mean`` over all sequences (masked ones count as 0)."""

    mode: str = "seq-mean-token-mean"
    denominator: str = "per_sequence_all"


def self_distillation_loss(
    divergence_N_T: torch.Tensor,
    loss_mask_N_T: torch.Tensor,
    *,
    is_weight_N_T: torch.Tensor | None = None,
    question_weight_N: torch.Tensor | None = None,
    aggregation: DistillAggregation = DistillAggregation(),
    global_denominator: torch.Tensor | None = None,
) -> LossOutput:
    """SDPO's loss with optional IS clip factor and question weights (§4.7, §6.2):
    agg(w_q(i) · IS[i,t] · D[i,t], loss_mask) where loss_mask = response mask · sd_mask."""
    keep = loss_mask_N_T.to(torch.bool)
    per_token = divergence_N_T
    if is_weight_N_T is not None:  # factors are zeroed off the mask so NaN there cannot reach the gradient
        per_token = per_token * torch.where(keep, is_weight_N_T.detach(), 0.0)
    if question_weight_N is not None:
        q = question_weight_N.detach().to(per_token.dtype).unsqueeze(-1)
        per_token = per_token * torch.where(keep, q, 0.0)
    loss = aggregate(
        per_token, loss_mask_N_T, aggregation.mode,
        denominator=aggregation.denominator, global_denominator=global_denominator,
    )  # fmt: skip
    return LossOutput(loss=loss, per_token_N_T=per_token)


def srpo_loss(
    grpo_loss_N_T: torch.Tensor,
    sdpo_loss_N_T: torch.Tensor,
    routing: SrpoRouting,
    mask_N_T: torch.Tensor,
    *,
    global_denominator: torch.Tensor | None = None,
) -> LossOutput:
    """SRPO's union objective (§7.4): (Σ z_grpo m ℓ_GRPO + Σ z_sdpo m ℓ_DW) / Σ m.

    ``sdpo_loss_N_T`` is the entropy-weighted, IS-clipped SDPO per-token loss; ``grpo_loss_N_T`` the
    clipped surrogate with the whole-group GRPO advantage. Metrics: each branch's token share.
    """
    sdpo_rows = routing.sdpo_N.to(torch.bool).unsqueeze(-1)
    per_token = torch.where(sdpo_rows, sdpo_loss_N_T, grpo_loss_N_T)
    loss = aggregate(per_token, mask_N_T, "token-mean", global_denominator=global_denominator)
    mask = mask_N_T.to(torch.bool)
    total = mask.sum().clamp(min=1)
    metrics = {"sdpo_token_fraction": float((mask & sdpo_rows).sum() / total)}
    return LossOutput(loss=loss, per_token_N_T=per_token, metrics=metrics)
