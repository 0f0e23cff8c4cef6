"""Policy-gradient methods: GRPO, GRPO without std normalisation, and on-policy distillation (OPD).

- ``grpo`` (docs/algorithms.md §2, §7.1): A_i = (r_i − mean_q)/(std_q + ε) on every token, PPO clip 0.2/0.28,
  dual clip 3, token-mean, no KL.
- ``grpo_no_std``: A_i = r_i − mean_q ("GRPO w/o Norm", Dr.GRPO style).
- ``opd`` (§3.1, §7.2): A[i,t] = −(logp_old − logp_T)[i,t] from an external teacher on every rollout, PPO
  clip 0.2/0.2 (SCOPE's stack). Rows whose teacher scores did not arrive are excluded from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.core.advantages import grpo_advantages, opd_advantages
from opdkit.core.losses import LossOutput, aggregation_denominator, clipped_policy_loss, masked_mean
from opdkit.core.registry import Registry
from opdkit.train.batch import Prepared, Rows, StepBatch, old_or_current
from opdkit.train.methods.base import Method, MethodConfig, MethodContext
from opdkit.train.student import StudentOutput


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PolicyLossConfig(MethodConfig):
    """Shared by the policy-gradient methods: the PPO-style clip and the aggregation (§2.2, §2.3)."""

    clip_low: float = _f(0.2, "PPO lower clip ε_low")
    clip_high: float = _f(0.28, "PPO upper clip ε_high (clip-higher; 0.2 for SCOPE's stack)")
    dual_clip: float | None = _f(3.0, "dual-clip constant c for negative advantages (None = off)")
    agg: str = _f("token-mean", "loss aggregation: token-mean, seq-mean-token-sum, seq-mean-token-mean, "
                  "seq-mean-token-sum-norm")  # fmt: skip


@dataclass(frozen=True)
class GrpoConfig(PolicyLossConfig):
    name: str = _f("grpo", "the method")
    normalize_std: bool = _f(True, "divide by the group's unbiased std (False = GRPO w/o Norm)")
    eps: float = _f(1e-6, "ε added to the std")


@dataclass(frozen=True)
class GrpoNoStdConfig(GrpoConfig):
    name: str = _f("grpo_no_std", "the method")
    normalize_std: bool = _f(False, "divide by the group's unbiased std (False = GRPO w/o Norm)")


@dataclass(frozen=True)
class OpdConfig(PolicyLossConfig):
    name: str = _f("opd", "the method")
    clip_high: float = _f(0.2, "PPO upper clip ε_high (SCOPE's stack uses 0.2/0.2)")
    coef: float = _f(1.0, "λ, the scale of the reverse-KL advantage")
    discount: float = _f(0.0, "γ: discounted future sum of the per-token advantage (Tinker default 0)")


@dataclass(frozen=True)
class PolicyRows(Rows):
    """The policy-gradient methods' hand-off: the advantage, (N,) per sequence (GRPO) or (N, T) per token
    (OPD), and the tokens in the loss (N, T) (None: the response mask)."""

    advantage: torch.Tensor
    loss_mask_N_T: torch.Tensor | None = None


def policy_gradient_loss(
    cfg: PolicyLossConfig, batch: StepBatch, rows: PolicyRows, logp: torch.Tensor, denom: torch.Tensor
) -> LossOutput:
    """Clipped surrogate with ``rows.advantage`` aggregated over its loss mask with ``denom``; ``logp`` the
    current log-probs (N, T) with gradient."""
    adv = rows.advantage
    loss_mask_N_T = batch.response_mask_N_T if rows.loss_mask_N_T is None else rows.loss_mask_N_T
    old = old_or_current(batch, logp)
    return clipped_policy_loss(
        logp, old, adv, loss_mask_N_T,
        clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, mode=cfg.agg,
        global_denominator=denom,
    )  # fmt: skip


class Grpo(Method[PolicyRows]):
    config_type = GrpoConfig
    min_group_size = 2
    description = "GRPO: group-normalised outcome advantage, PPO clip (§2)"

    def needs_old_logp(self, cfg: GrpoConfig) -> bool:
        return False  # only the PPO ratio uses them, inside the loss

    def prepare(self, cfg: GrpoConfig, batch: StepBatch, ctx: MethodContext) -> Prepared[PolicyRows]:
        adv_N = grpo_advantages(
            batch.rewards_N, batch.group_ids_N, normalize_std=cfg.normalize_std, eps=cfg.eps
        )
        metrics = {"adv/mean": float(adv_N.mean()), "adv/abs_mean": float(adv_N.abs().mean())}
        skip = None if bool((adv_N != 0).any()) else "every advantage is 0 (all groups degenerate)"
        return Prepared(PolicyRows(advantage=adv_N), metrics=metrics, skip_reason=skip)

    def denominators(self, cfg, batch, rows):
        return {"agg": aggregation_denominator(batch.response_mask_N_T, cfg.agg)}

    def loss(self, cfg, batch, rows: PolicyRows, denoms, out: StudentOutput, ctx) -> LossOutput:
        return policy_gradient_loss(cfg, batch, rows, out.logp_N_T, denoms["agg"])


class GrpoNoStd(Grpo):
    config_type = GrpoNoStdConfig
    description = "GRPO w/o std normalisation (Dr.GRPO-style advantage r − mean)"


@dataclass(frozen=True)
class TeacherResult:
    """External-teacher log-probs (N, T) (NaN on invalid rows), the valid rows (N,), counters, and the rows
    the teacher flags for diagnostics (``TeacherScores.row_flags_N``) or None."""

    logp_N_T: torch.Tensor
    valid_N: torch.Tensor
    stats: dict
    row_flags_N: torch.Tensor | None = None


def score_with_teacher(batch: StepBatch, ctx: MethodContext) -> TeacherResult:
    """Score the batch's own prompts and responses with the external teacher (§5.1: unchanged prompt)."""
    if ctx.teacher is None:
        raise ValueError("this method needs an external teacher: set teacher.kind to 'local' or 'server'")
    scores = ctx.teacher.score(
        batch.unpadded_prompts(), batch.unpadded_responses(), pad_to=batch.response_ids_N_T.shape[1]
    )
    device = batch.response_ids_N_T.device
    return TeacherResult(
        scores.logp_N_T.to(device), scores.valid_N.to(device, torch.bool), dict(scores.stats),
        scores.row_flags_N,
    )  # fmt: skip


def teacher_metrics(batch: StepBatch, teacher: TeacherResult, mask_N_T: torch.Tensor) -> dict[str, float]:
    """Valid-row fraction and the sampled-token reverse KL estimate mean(logp_old − logp_T) on ``mask``."""
    gap = torch.where(mask_N_T, batch.old_logp_N_T - teacher.logp_N_T, 0.0)
    return {
        "teacher/valid_fraction": float(teacher.valid_N.float().mean()),
        "teacher/reverse_kl": float(masked_mean(gap, mask_N_T)),
    }


class Opd(Method[PolicyRows]):
    config_type = OpdConfig
    uses_teacher = True
    description = "OPD: per-token reverse-KL advantage from an external teacher (§3.1)"

    def prepare(self, cfg: OpdConfig, batch: StepBatch, ctx: MethodContext) -> Prepared[PolicyRows]:
        teacher = score_with_teacher(batch, ctx)
        mask = batch.response_mask_N_T.bool() & teacher.valid_N.unsqueeze(-1)
        adv = opd_advantages(batch.old_logp_N_T, teacher.logp_N_T, mask, coef=cfg.coef, discount=cfg.discount)
        metrics = {**teacher.stats, **teacher_metrics(batch, teacher, mask)}
        skip = None if bool(mask.any()) else "no row has teacher scores"
        return Prepared(PolicyRows(advantage=adv, loss_mask_N_T=mask), metrics=metrics, skip_reason=skip)

    def denominators(self, cfg, batch, rows):
        return {"agg": aggregation_denominator(rows.loss_mask_N_T, cfg.agg)}

    def loss(self, cfg, batch, rows: PolicyRows, denoms, out: StudentOutput, ctx) -> LossOutput:
        return policy_gradient_loss(cfg, batch, rows, out.logp_N_T, denoms["agg"])


def register(methods: Registry) -> None:
    methods.add("grpo", Grpo())
    methods.add("grpo_no_std", GrpoNoStd())
    methods.add("opd", Opd())
