"""Advantage estimators registered in verl's ``ADV_ESTIMATOR_REGISTRY`` (select with
``algorithm.adv_estimator=NAME``); both call opdkit.core.

- ``opdkit_grpo``: GRPO (docs/algorithms.md §2.1) through ``opdkit.core.advantages.grpo_advantages``; the same
  numbers as verl's built-in ``grpo`` (unbiased group std, ε = 1e-6, a one-member group gets A = r).
  ``algorithm.norm_adv_by_std_in_grpo=False`` gives GRPO without std normalisation.
- ``opdkit_sc_grpo``: the GRPO advantage times the SC pass-rate weight of its question,
  A'_i = w_q(i)·A_i with w_q = (p_q(1-p_q))^α normalised to mean 1 over the informative questions of the
  whole step batch (§6.1-§6.2; α = ``algorithm.opdkit.sc_alpha``; ``algorithm.opdkit.weighting=hard_filter``
  uses 1[0 < p < 1] instead, §6.4). verl calls estimators once per step on
  the driver with every sequence of the step, so the normalisation is never per micro-batch.

How verl calls them (``verl.trainer.ppo.ray_trainer.compute_advantage``, used by the V1 trainer)::

    advantages, returns = fn(token_level_rewards=(N, T), response_mask=(N, T), config=algorithm, index=uid)

``index`` is a numpy object array of uids (one per sequence); rewards are summed over tokens.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from opdkit.core.advantages import grpo_advantages
from opdkit.integrations.verl.fields import DriverBatch, group_ids_from_uids, step_weights
from opdkit.integrations.verl.params import FIELD_Q_WEIGHT, parse_params

GRPO_EPS = 1e-6  # verl's default ``epsilon`` of compute_grpo_outcome_advantage


def _config_get(config: Any, key: str, default: Any) -> Any:
    return default if config is None else config.get(key, default)


def _grpo_N(token_level_rewards: torch.Tensor, index: np.ndarray, config: Any) -> torch.Tensor:
    normalize_std = bool(_config_get(config, "norm_adv_by_std_in_grpo", True))
    rewards_N = token_level_rewards.sum(dim=-1)
    return grpo_advantages(rewards_N, group_ids_from_uids(index), normalize_std=normalize_std, eps=GRPO_EPS)


def _broadcast(adv_N: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    adv_N_T = adv_N.to(response_mask.device).unsqueeze(-1) * response_mask
    return adv_N_T, adv_N_T  # (advantages, returns), as verl's outcome estimators return


@register_adv_est("opdkit_grpo")
def compute_opdkit_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantage (N, T) broadcast over response tokens; see the module docstring."""
    with torch.no_grad():
        return _broadcast(_grpo_N(token_level_rewards, index, config), response_mask)


@register_adv_est("opdkit_sc_grpo")
def compute_opdkit_sc_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SC-weighted GRPO advantage w_q(i)·A_i (N, T); see the module docstring."""
    params = parse_params(_config_get(config, "opdkit", None))
    if params.weighting not in ("pass_rate", "hard_filter"):  # the estimator's own weighting: pass rates
        params = replace(params, weighting="pass_rate")
    with torch.no_grad():
        step = DriverBatch(
            rewards_N=token_level_rewards.sum(dim=-1),
            group_ids_N=group_ids_from_uids(index),
            mask_N_T=response_mask,
        )
        w_N = step_weights(step, params).fields_N[FIELD_Q_WEIGHT]
        return _broadcast(w_N * _grpo_N(token_level_rewards, index, config), response_mask)
