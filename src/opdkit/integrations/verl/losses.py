"""Distillation losses registered in verl's ``DISTILLATION_LOSS_REGISTRY``
(select with ``distillation.distillation_loss.loss_mode=NAME``, ``distillation.enabled=true``).

verl calls a distillation loss on each micro-batch of the actor update as
``fn(config=ActorConfig, distillation_config=DistillationConfig, model_output={"log_probs": nested (b, S)},
data=TensorDict)`` and expects per-token losses (b, L) over the response, which verl then aggregates with
``actor.loss_agg_mode`` (global token and sequence counts) -- or, with ``use_policy_gradient=true``, uses
as a negative advantage. ``data`` holds nested (jagged) per-sample tensors: ``prompts``, ``responses``,
``response_mask``, ``old_log_probs``, ``teacher_logprobs`` (prompt + response, (S, 1) for estimator
losses) and the per-token fields the ``opdkit_sync`` trainer wrote on the driver (``params.FIELD_*``).

- ``opdkit_scope`` (§5.5, the reference code path): on wrong rows the clipped surrogate with
  A = w_tea·(logp_T − logp_old); on correct rows w_stu-weighted MLE (−logp_θ); both from
  ``opdkit.core.objectives.scope_loss``. verl's one token-mean over all tokens becomes the reference's
  L_PG + L_MLE because the correct rows are multiplied by ``opdkit_mle_scale`` (``fields.scope_mle_scale``).
  Requires ``loss_agg_mode=token-mean``, ``use_policy_gradient=false``, ``use_task_rewards=false`` and
  ``loss_max_clamp=null``; clip ε from ``distillation_loss.clip_ratio_low/high``, dual clip from
  ``actor.clip_ratio_c``.
- ``opdkit_sc_k1`` / ``opdkit_sc_k2`` / ``opdkit_sc_k3``: the sampled-token KL estimator of §2.4 between
  student and teacher, times the question weight w_q(i) (§6.2) -- SC-weighted OPD.
- ``opdkit_sc_forward_kl_topk``: verl's own top-k forward KL (computed in its logits processor) times w_q(i).

Question weights come from ``algorithm.opdkit.weighting=pass_rate`` (SC-SDPO, α = ``sc_alpha``) or
``hard_filter``; SCOPE weights from ``weighting=scope``. A missing field means the run did not use the
``opdkit_sync`` trainer: the error says what to set.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.distillation.losses import (
    DistillationLossSettings,
    compute_forward_kl_topk,
    register_distillation_loss,
)
from verl.workers.utils.padding import no_padding_2_padding

from opdkit.core.divergences import kl_estimate
from opdkit.core.groups import sequence_mean
from opdkit.core.objectives import ClipConfig, ScopeInputs, scope_loss
from opdkit.core.weights import ScopeWeights
from opdkit.integrations.verl.params import (
    CONFIG_NODE,
    FIELD_CORRECT,
    FIELD_MLE_SCALE,
    FIELD_Q_WEIGHT,
    FIELD_W_STUDENT,
    FIELD_W_TEACHER,
)

SC_ESTIMATORS = {"opdkit_sc_k1": "k1", "opdkit_sc_k2": "k2", "opdkit_sc_k3": "k3"}
_WEIGHTING_OF_FIELD = {FIELD_Q_WEIGHT: "pass_rate (or hard_filter)", FIELD_W_STUDENT: "scope"}


def _missing_field_error(name: str) -> KeyError:
    weighting = _WEIGHTING_OF_FIELD.get(name, "scope")
    return KeyError(
        f"batch field {name!r} is missing: the opdkit loss needs weights written on the driver; set "
        f"trainer.v1.trainer_mode=opdkit_sync and +{CONFIG_NODE}.weighting={weighting.split()[0]} "
        f"(the weighting this loss needs: {weighting})"
    )


def _padded_response_fields(data: TensorDict, names: list[str]) -> TensorDict:
    """Response-length fields as a padded (b, L) TensorDict, as verl's ``ppo_loss`` reads them."""
    for name in names:
        if name not in data.keys():  # noqa: SIM118  (TensorDict refuses `in` on itself)
            raise _missing_field_error(name)
    return data.select(*names).to_padded_tensor()


def _row_value_N(padded: TensorDict, name: str, mask_N_T: torch.Tensor) -> torch.Tensor:
    """A per-sequence value stored constant over the response's tokens -> (b,) (0 for an empty response)."""
    return sequence_mean(padded[name].to(torch.float32), mask_N_T)


def _teacher_logp_N_T(data: TensorDict) -> torch.Tensor:
    """Sampled-token teacher log-probs over the response (b, L), sliced as verl's own k1/k3 loss does."""
    if "teacher_logprobs" not in data.keys():  # noqa: SIM118
        raise KeyError("batch field 'teacher_logprobs' is missing: set distillation.enabled=true")
    return no_padding_2_padding(data["teacher_logprobs"], data).squeeze(-1).to(torch.float32)


def _check_scope_config(config: Any, distillation_config: Any) -> None:
    loss_cfg = distillation_config.distillation_loss
    problems = []
    if config.loss_agg_mode != "token-mean":
        problems.append(f"actor_rollout_ref.actor.loss_agg_mode=token-mean (got {config.loss_agg_mode})")
    if loss_cfg.use_policy_gradient:
        problems.append("distillation.distillation_loss.use_policy_gradient=false")
    if loss_cfg.use_task_rewards:
        problems.append("distillation.distillation_loss.use_task_rewards=false")
    if loss_cfg.loss_max_clamp is not None:
        problems.append("distillation.distillation_loss.loss_max_clamp=null")
    if problems:
        raise ValueError("opdkit_scope needs " + ", ".join(problems))


@register_distillation_loss(DistillationLossSettings(names=["opdkit_scope"], use_estimator=True))  # type: ignore[arg-type]
def compute_opdkit_scope_loss(
    config: Any, distillation_config: Any, model_output: dict, data: TensorDict
) -> tuple[torch.Tensor, dict[str, Any]]:
    """SCOPE per-token loss (b, L) whose token-mean over all tokens is L_PG + L_MLE (module docstring)."""
    _check_scope_config(config, distillation_config)
    logp_N_T = no_padding_2_padding(model_output["log_probs"], data)
    names = [FIELD_W_STUDENT, FIELD_W_TEACHER, FIELD_CORRECT, FIELD_MLE_SCALE]
    padded = _padded_response_fields(data, ["response_mask", "old_log_probs", *names])
    mask_N_T = padded["response_mask"].to(torch.bool)
    inputs = ScopeInputs(
        logp_N_T=logp_N_T,
        old_logp_N_T=padded["old_log_probs"].to(torch.float32),
        teacher_logp_N_T=_teacher_logp_N_T(data),
        mask_N_T=mask_N_T,
        correct_N=_row_value_N(padded, FIELD_CORRECT, mask_N_T) > 0.5,
    )
    weights = ScopeWeights(
        student_N=_row_value_N(padded, FIELD_W_STUDENT, mask_N_T),
        teacher_N=_row_value_N(padded, FIELD_W_TEACHER, mask_N_T),
    )
    loss_cfg = distillation_config.distillation_loss
    clip = ClipConfig(
        clip_low=loss_cfg.clip_ratio_low,
        clip_high=loss_cfg.clip_ratio_high,
        dual_clip=config.get("clip_ratio_c", 3.0),
    )
    out = scope_loss(inputs, weights, clip=clip, agg="joint")  # one token-mean; the scale below splits it
    correct_N_T = mask_N_T & inputs.correct_N.unsqueeze(-1)
    scale_N_T = torch.where(correct_N_T, _row_value_N(padded, FIELD_MLE_SCALE, mask_N_T).unsqueeze(-1), 1.0)
    metrics = {f"opdkit/scope_{k}": v for k, v in out.metrics.items()}
    return out.per_token_N_T * scale_N_T, metrics


@register_distillation_loss(DistillationLossSettings(names=list(SC_ESTIMATORS), use_estimator=True))  # type: ignore[arg-type]
def compute_opdkit_sc_kl_loss(
    config: Any, distillation_config: Any, model_output: dict, data: TensorDict
) -> tuple[torch.Tensor, dict[str, Any]]:
    """w_q(i) · k(logp_θ, logp_T) per token (b, L), k the loss mode's KL estimator (§2.4, §6.2)."""
    kind = SC_ESTIMATORS[distillation_config.distillation_loss.loss_mode]
    logp_N_T = no_padding_2_padding(model_output["log_probs"], data)
    padded = _padded_response_fields(data, ["response_mask", FIELD_Q_WEIGHT])
    mask_N_T = padded["response_mask"].to(torch.bool)
    w_N = _row_value_N(padded, FIELD_Q_WEIGHT, mask_N_T)
    per_token = w_N.unsqueeze(-1) * kl_estimate(logp_N_T, _teacher_logp_N_T(data), kind)
    return per_token, {"opdkit/q_weight_mean_micro": float(w_N.mean())}


@register_distillation_loss(DistillationLossSettings(names=["opdkit_sc_forward_kl_topk"], use_topk=True))  # type: ignore[arg-type]
def compute_opdkit_sc_forward_kl_topk(
    config: Any, distillation_config: Any, model_output: dict, data: TensorDict
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's top-k forward KL per token times w_q(i) (§6.2)."""
    losses_N_T, metrics = compute_forward_kl_topk(config, distillation_config, model_output, data)
    padded = _padded_response_fields(data, ["response_mask", FIELD_Q_WEIGHT])
    w_N = _row_value_N(padded, FIELD_Q_WEIGHT, padded["response_mask"].to(torch.bool))
    return losses_N_T * w_N.to(losses_N_T.device).unsqueeze(-1), metrics
