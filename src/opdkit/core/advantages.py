"""Advantages: GRPO's group-normalised outcome advantage and the OPD per-token advantage.

GRPO (docs/algorithms.md §2.1, verl ``compute_grpo_outcome_advantage``)::

    A_i = (r_i − mean_q) / (std_q + ε)      normalize_std=True   ("GRPO")
    A_i =  r_i − mean_q                     normalize_std=False  ("GRPO w/o Norm", Dr.GRPO style)

with the unbiased (n−1) group std; a group of one member takes mean 0 and std 1, so A = r (§1.6).
For binary rewards with k of n correct, p = k/n and σ = sqrt(n p(1−p)/(n−1)): A⁺ = (1−p)/σ, A⁻ = −p/σ.

OPD (§3.1, the negative per-token reverse-KL estimate)::

    A[i,t] = −λ (logp_old[i,t] − logp_T[i,t]) m[i,t]

optionally summed into the future with discount γ (Tinker's default γ = 0: no propagation).
"""

from __future__ import annotations

import torch

from opdkit.core.composition import question_pass_rates
from opdkit.core.divergences import LOGP_FLOOR
from opdkit.core.groups import group_index, group_mean, group_sum


def grpo_advantages(
    rewards_N: torch.Tensor,
    group_ids_N: torch.Tensor,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO outcome advantage per sequence -> (N,) float32; see the module docstring (§2.1, §1.6)."""
    rewards_N = rewards_N.to(torch.float32)
    idx = group_index(group_ids_N)
    size_N = idx.sizes_P[idx.inverse_N].to(torch.float32)
    mean_N = group_mean(rewards_N, idx)[idx.inverse_N]
    # Unbiased variance; the clamp only guards the singleton case, replaced below.
    sq_dev_P = group_sum((rewards_N - mean_N) ** 2, idx)
    std_N = (sq_dev_P[idx.inverse_N] / (size_N - 1).clamp(min=1)).sqrt()
    singleton_N = size_N == 1
    mean_N = torch.where(singleton_N, torch.zeros_like(mean_N), mean_N)  # verl: mean 0, std 1 (§1.6)
    std_N = torch.where(singleton_N, torch.ones_like(std_N), std_N)
    centred_N = rewards_N - mean_N
    return centred_N / (std_N + eps) if normalize_std else centred_N


def group_pass_rates(success_N: torch.Tensor, group_ids_N: torch.Tensor) -> torch.Tensor:
    """Each sequence's group pass rate p_q = k_q / n_q -> (N,) float32 (§1.5).

    The per-row view of ``core.composition.question_pass_rates`` (one entry per question).
    """
    return question_pass_rates(success_N, group_ids_N).per_row()


def opd_advantages(
    old_logp_N_T: torch.Tensor,
    teacher_logp_N_T: torch.Tensor,
    mask_N_T: torch.Tensor,
    *,
    coef: float = 1.0,
    discount: float = 0.0,
) -> torch.Tensor:
    """Per-token OPD advantage A = −λ (logp_old − logp_T) m -> (N, T) (§3.1).

    ``discount`` γ > 0 replaces A_t by Σ_{s ≥ t} γ^{s−t} A_s over the valid tokens (Tinker's option).
    Masked positions are 0 whatever they hold (NaN teacher scores of invalid rows included).
    """
    mask = mask_N_T.to(torch.bool)
    teacher = teacher_logp_N_T.to(torch.float32).clamp(min=LOGP_FLOOR)  # §5.7: never −inf
    adv_N_T = -coef * (old_logp_N_T.to(torch.float32) - teacher)
    adv_N_T = torch.where(mask, adv_N_T, torch.zeros_like(adv_N_T))
    if discount == 0.0:
        return adv_N_T
    out_N_T = torch.zeros_like(adv_N_T)
    running_N = torch.zeros_like(adv_N_T[:, 0])
    for t in range(adv_N_T.shape[1] - 1, -1, -1):  # reverse cumulative discounted sum
        running_N = adv_N_T[:, t] + discount * running_N
        out_N_T[:, t] = running_N
    return torch.where(mask, out_N_T, torch.zeros_like(out_N_T))
