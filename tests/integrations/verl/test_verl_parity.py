"""Parity: opdkit.core equals verl 0.9.1's built-ins on random inputs where they overlap (GRPO with and
without std normalisation, the four loss aggregations, the k1/k2/k3 KL estimators and their "+" gradients,
and the clipped PPO surrogate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from verl.trainer.ppo.core_algos import (
    agg_loss,
    compute_grpo_outcome_advantage,
    compute_policy_loss_vanilla,
    kl_penalty,
)
from verl_testkit import actor_and_distillation_configs

from opdkit.core.advantages import grpo_advantages
from opdkit.core.divergences import kl_estimate
from opdkit.core.losses import aggregate, clipped_policy_loss
from opdkit.integrations.verl.fields import group_ids_from_uids


def _random_groups(gen: torch.Generator, n_groups: int) -> np.ndarray:
    """uids for groups of sizes 1..6, shuffled so members are not contiguous (verl allows that)."""
    sizes = torch.randint(1, 7, (n_groups,), generator=gen).tolist()
    uids = [f"q{g}" for g, size in enumerate(sizes) for _ in range(size)]
    order = torch.randperm(len(uids), generator=gen).tolist()
    return np.array([uids[i] for i in order], dtype=object)


@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_matches_verl(normalize_std: bool, binary: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    index = _random_groups(gen, n_groups=12)
    n, width = len(index), 7
    rewards_N = (torch.rand(n, generator=gen) < 0.4).float() if binary else torch.randn(n, generator=gen)
    mask_N_T = (torch.arange(width).unsqueeze(0) < torch.randint(1, width + 1, (n, 1), generator=gen)).float()
    # verl reads the outcome reward as the token sum: put it on the last valid token
    last_N = mask_N_T.sum(-1).long() - 1
    token_rewards = torch.zeros(n, width).scatter(1, last_N.unsqueeze(-1), rewards_N.unsqueeze(-1))
    expected, _ = compute_grpo_outcome_advantage(
        token_rewards, mask_N_T, index, norm_adv_by_std_in_grpo=normalize_std
    )
    ours_N = grpo_advantages(rewards_N, group_ids_from_uids(index), normalize_std=normalize_std)
    torch.testing.assert_close(ours_N.unsqueeze(-1) * mask_N_T, expected, rtol=1e-5, atol=1e-5)


def _loss_and_mask(
    seed: int, *, empty_row: bool, n: int = 9, width: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    loss_N_T = torch.randn(n, width, generator=gen)
    lengths = torch.randint(1, width + 1, (n,), generator=gen)
    if empty_row:
        lengths[0] = 0  # a fully masked row
    return loss_N_T, (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(-1)).float()


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_aggregation_matches_verl_agg_loss(mode: str, seed: int) -> None:
    # With a fully masked row the Dr.GRPO mode differs (next test); the others leave it out in both libraries.
    loss_N_T, mask_N_T = _loss_and_mask(seed, empty_row=mode != "seq-mean-token-sum-norm")
    # verl's seq-mean-token-sum-norm divides by the horizon T unless told otherwise; ours by norm_length or T
    expected = agg_loss(loss_N_T, mask_N_T, mode)
    torch.testing.assert_close(aggregate(loss_N_T, mask_N_T, mode), expected, rtol=1e-6, atol=1e-6)


def test_seq_mean_token_sum_norm_with_a_constant_length_and_an_empty_row() -> None:
    loss_N_T, mask_N_T = _loss_and_mask(3, empty_row=True)
    expected = agg_loss(loss_N_T, mask_N_T, "seq-mean-token-sum-norm", loss_scale_factor=4096)
    ours = aggregate(loss_N_T, mask_N_T, "seq-mean-token-sum-norm", norm_length=4096)
    # verl: Σ(M·ℓ)/N_s/L with N_s the non-empty rows; ours: Σ(M·ℓ)/(N·L) with N every row (Dr.GRPO's B·L_max).
    n_rows, n_valid = mask_N_T.shape[0], float((mask_N_T.sum(-1) > 0).sum())
    torch.testing.assert_close(ours * n_rows / n_valid, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["k1", "kl", "k2", "mse", "k3", "low_var_kl"])
def test_kl_estimators_match_verl(kind: str) -> None:
    gen = torch.Generator().manual_seed(4)
    logp = -torch.rand(6, 9, generator=gen) * 25  # wide enough to hit k3's ±20 input and ±10 output clamps
    ref = -torch.rand(6, 9, generator=gen) * 25
    torch.testing.assert_close(kl_estimate(logp, ref, kind), kl_penalty(logp, ref, kind))


@pytest.mark.parametrize("kind", ["k1+", "k3+"])
def test_straight_through_kl_gradients_match_verl(kind: str) -> None:
    gen = torch.Generator().manual_seed(5)
    base = -torch.rand(4, 5, generator=gen) * 3
    ref = -torch.rand(4, 5, generator=gen) * 3
    ours_in, verl_in = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    ours, theirs = kl_estimate(ours_in, ref, kind), kl_penalty(verl_in, ref, kind)
    torch.testing.assert_close(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_in.grad, verl_in.grad)


@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28)])
def test_clipped_surrogate_matches_verl_vanilla(clip: tuple[float, float]) -> None:
    actor_config, _ = actor_and_distillation_configs(
        (
            f"actor_rollout_ref.actor.clip_ratio_low={clip[0]}",
            f"actor_rollout_ref.actor.clip_ratio_high={clip[1]}",
        )
    )
    gen = torch.Generator().manual_seed(6)
    old = -torch.rand(8, 10, generator=gen) * 2
    new_ours = (old + 0.6 * torch.randn(8, 10, generator=gen)).requires_grad_(True)  # ratios outside the clip
    new_verl = new_ours.detach().clone().requires_grad_(True)
    adv = torch.randn(8, 10, generator=gen) * 2
    mask = (torch.rand(8, 10, generator=gen) < 0.8).float()
    actor_config.global_batch_info.clear()  # single process: token-mean over this batch
    theirs, metrics = compute_policy_loss_vanilla(old, new_verl, adv, mask, "token-mean", actor_config)
    ours = clipped_policy_loss(new_ours, old, adv, mask, clip_low=clip[0], clip_high=clip[1], dual_clip=3.0)
    torch.testing.assert_close(ours.loss, theirs)
    ours.loss.backward()
    theirs.backward()
    torch.testing.assert_close(new_ours.grad, new_verl.grad)
    assert ours.metrics["clipfrac"] == pytest.approx(metrics["actor/pg_clipfrac"], abs=1e-6)
    assert ours.metrics["clipfrac_lower"] == pytest.approx(metrics["actor/pg_clipfrac_lower"], abs=1e-6)
