"""Weights of the methods: SC-SDPO pass-rate weights, hard filter, PACED, SCOPE dual path, SRPO.

- SC-SDPO (docs/algorithms.md §6.1): u_q = (p_q(1−p_q))^α, normalised to mean 1 over Q_nd = {q : 0 < p_q < 1},
  0 for degenerate questions; with Q_nd empty every weight is 0 (the caller skips the step, §6.3).
- Hard filter (§6.4): u_q = 1[0 < p_q < 1] (already mean 1 over Q_nd).
- PACED (§7.3): the Beta kernel p0^a (1−p0)^b of a frozen offline pass rate, normalised to mean 1 over the
  training set's non-degenerate questions (a = b = 1 is PACED v3 and SC-SDPO's baseline).
- SCOPE (§5.4, §5.6): per group, correct rows get softmax(student_exponent·(−ℓS)/τ) over the correct rows,
  wrong rows get softmax(teacher_exponent·(−ℓT)/τ) over the wrong rows, where ℓ is the mean token log-prob
  (PPL = exp(−ℓ), so the weight is ∝ PPL^(exponent/τ)); ``mean1`` multiplies by the path size.
- SRPO (§7.4): routing of failed rollouts with a correct sibling to SDPO, and entropy weights
  exp(−β H) normalised to mean 1 over the SDPO-routed valid tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdkit.core.divergences import LOGP_FLOOR
from opdkit.core.groups import GroupIndex, group_index, group_max, group_sum


def _informative(pass_rate: torch.Tensor) -> torch.Tensor:
    return (pass_rate > 0) & (pass_rate < 1)


def _unit_mean_over(u: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """u / mean(u[keep]) on ``keep``, exactly 0 elsewhere; all zeros when ``keep`` is empty."""
    u = torch.where(keep, u, torch.zeros_like(u))
    count = keep.sum()
    if count == 0:
        return torch.zeros_like(u)
    return u / (u.sum() / count)


def pass_rate_weights(pass_rate: torch.Tensor, *, alpha: float = 0.5) -> torch.Tensor:
    """SC-SDPO question weights w_q (§6.1), elementwise over questions.

    ``pass_rate``: (Q,) pass rates of the step's questions (one entry per question, not per rollout, so that
    the mean is over questions). Returns (Q,) float32: (p(1−p))^α / mean over 0<p<1, 0 elsewhere.
    Example: n = 8, k = 1..4 give raw u = 0.331, 0.433, 0.484, 0.500 for α = 0.5.
    """
    p = pass_rate.to(torch.float32)
    keep = _informative(p)
    u = (p * (1 - p)).clamp(min=0) ** alpha
    return _unit_mean_over(u, keep)


def hard_filter_weights(pass_rate: torch.Tensor) -> torch.Tensor:
    """1 where 0 < p < 1, else 0 (§6.4) -> float32, same shape as ``pass_rate``."""
    return _informative(pass_rate).to(torch.float32)


def paced_weights(offline_pass_rate: torch.Tensor, *, a: float = 1.0, b: float = 1.0) -> torch.Tensor:
    """PACED weights from the frozen offline pass rate of the initial policy (§7.3).

    ``offline_pass_rate``: (D,) p0 of every training question. Returns (D,) float32 constants
    p0^a (1−p0)^b / mean over the non-degenerate questions; degenerate questions get 0 forever.
    """
    p = offline_pass_rate.to(torch.float32)
    keep = _informative(p)
    u = p.clamp(min=0) ** a * (1 - p).clamp(min=0) ** b
    return _unit_mean_over(u, keep)


# ---------------------------------------------------------------------------------------------- SCOPE

#: (student_exponent, teacher_exponent) of the sign presets (§5.6, §11 A1). ``paper``: w_stu ∝ PPL_S^{+1/τ},
#: w_tea ∝ PPL_T^{−1/τ}. ``released_scripts``: both flags True in machine981/SCOPE's scripts, which inverts
#: the student path (w_stu ∝ PPL_S^{−1/τ}).
SCOPE_SIGN_PRESETS: dict[str, tuple[float, float]] = {
    "paper": (1.0, -1.0),
    "released_scripts": (-1.0, -1.0),
}


@dataclass(frozen=True)
class ScopeWeights:
    """SCOPE per-sequence weights: ``student_N`` on correct rows, ``teacher_N`` on wrong rows, else 0."""

    student_N: torch.Tensor
    teacher_N: torch.Tensor


def _path_softmax(
    logits_N: torch.Tensor, on_path_N: torch.Tensor, idx: GroupIndex, *, normalization: str
) -> torch.Tensor:
    """Softmax of ``logits_N`` over the on-path members of each group, in log space; 0 off the path."""
    neg_inf = torch.full_like(logits_N, float("-inf"))
    masked_N = torch.where(on_path_N, logits_N, neg_inf)
    max_P = group_max(masked_N, idx)
    max_N = torch.where(torch.isfinite(max_P), max_P, torch.zeros_like(max_P))[idx.inverse_N]
    exp_N = torch.where(on_path_N, torch.exp(logits_N - max_N), torch.zeros_like(logits_N))
    denom_N = group_sum(exp_N, idx)[idx.inverse_N]
    w_N = torch.where(on_path_N, exp_N / denom_N.clamp(min=torch.finfo(exp_N.dtype).tiny), exp_N)
    if normalization == "mean1":  # softmax × path size: uniform weights are 1, a singleton path gets 1.0
        path_size_N = group_sum(on_path_N.to(w_N.dtype), idx)[idx.inverse_N]
        w_N = w_N * path_size_N
    elif normalization != "sum1":
        raise ValueError(f"unknown SCOPE normalization {normalization!r}; valid: mean1, sum1")
    return w_N


def scope_weights(
    student_seq_logp_N: torch.Tensor,
    teacher_seq_logp_N: torch.Tensor,
    correct_N: torch.Tensor,
    group_ids_N: torch.Tensor,
    *,
    tau: float = 1.0,
    student_exponent: float = 1.0,
    teacher_exponent: float = -1.0,
    normalization: str = "mean1",
    valid_N: torch.Tensor | None = None,
) -> ScopeWeights:
    """SCOPE dual-path weights (§5.4, code's log-space softmax × path size for ``mean1``).

    seq_logp: (N,) mean token log-prob of each response (ℓS from the pre-update student, ℓT from the
    teacher); PPL = exp(−ℓ). Correct rows: w ∝ PPL_S^(student_exponent/τ) over the group's correct rows;
    wrong rows: w ∝ PPL_T^(teacher_exponent/τ) over the group's wrong rows.
    ``valid_N`` (bool) marks rows whose teacher scores arrived; invalid wrong rows are left out of the teacher
    softmax and get weight 0 (§5.7: never treat a failed row as a perfect teacher). Weights carry no gradient.
    Example (§5.6): two correct rows with ℓS = (−0.1, −1.0), τ = 1, exponent −1 (softmax of +ℓS) give
    2·softmax(−0.1, −1.0) = (1.42, 0.58); exponent +1 gives (0.58, 1.42).
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    correct = correct_N.to(torch.bool)
    idx = group_index(group_ids_N)
    # §5.7: log-probs floored at −1e4, so an −inf mean log-prob cannot make an inf − inf softmax logit
    student_logits_N = -student_exponent * student_seq_logp_N.detach().float().clamp(min=LOGP_FLOOR) / tau
    teacher_logits_N = -teacher_exponent * teacher_seq_logp_N.detach().float().clamp(min=LOGP_FLOOR) / tau
    wrong = ~correct
    if valid_N is not None:
        wrong = wrong & valid_N.to(torch.bool)
        teacher_logits_N = torch.where(wrong, teacher_logits_N, torch.zeros_like(teacher_logits_N))
    student_N = _path_softmax(student_logits_N, correct, idx, normalization=normalization)
    teacher_N = _path_softmax(teacher_logits_N, wrong, idx, normalization=normalization)
    return ScopeWeights(student_N=student_N, teacher_N=teacher_N)


# ----------------------------------------------------------------------------------------------- SRPO


@dataclass(frozen=True)
class SrpoRouting:
    """SRPO's routing (§7.4): ``sdpo_N`` = failed with a correct sibling; ``grpo_N`` = every other row."""

    sdpo_N: torch.Tensor
    grpo_N: torch.Tensor


def srpo_routing(
    success_N: torch.Tensor, group_ids_N: torch.Tensor, *, context_N: torch.Tensor | None = None
) -> SrpoRouting:
    """z_sdpo = (1 − c_i)·1[∃ j ≠ i in the group with c_j = 1]; z_grpo = 1 − z_sdpo (bool tensors).

    ``context_N`` (bool): the rows the self-teacher has a context for; a row without one cannot be distilled,
    so it stays on the GRPO branch (a failed row with a correct sibling always has its demonstration).
    """
    c = success_N.to(torch.bool)
    idx = group_index(group_ids_N)
    successes_N = group_sum(c.to(torch.int64), idx)[idx.inverse_N]
    sibling_success_N = (successes_N - c.to(torch.int64)) > 0
    sdpo_N = ~c & sibling_success_N
    if context_N is not None:
        sdpo_N = sdpo_N & context_N.to(torch.bool)
    return SrpoRouting(sdpo_N=sdpo_N, grpo_N=~sdpo_N)


def entropy_weights(entropy_N_T: torch.Tensor, mask_N_T: torch.Tensor, *, beta: float = 1.0) -> torch.Tensor:
    """DW-SDPO token weights w = exp(−βH) / mean over valid tokens of exp(−βH) (§7.4) -> (N, T), detached.

    ``mask_N_T``: the SDPO-routed valid tokens (the normalisation set). Computed in log space; 0 off the mask;
    all zeros when the mask is empty.
    """
    mask = mask_N_T.to(torch.bool)
    count = mask.sum()
    if count == 0:
        return torch.zeros_like(entropy_N_T, dtype=torch.float32)
    log_w = -beta * entropy_N_T.detach().to(torch.float32)
    log_w = torch.where(mask, log_w, torch.full_like(log_w, float("-inf")))
    log_mean = torch.logsumexp(log_w.flatten(), dim=0) - torch.log(count.to(torch.float32))
    return torch.where(mask, torch.exp(log_w - log_mean), torch.zeros_like(log_w))
