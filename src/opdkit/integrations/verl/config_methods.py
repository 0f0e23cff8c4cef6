"""How each opdkit method becomes verl overrides (used by ``config_gen``; no verl import).

One registry entry per ``method.name`` of opdkit's training config (``opdkit.train.methods``). Each plan gets
the validated method section (a frozen dataclass from ``opdkit.train``) and the ``verl:`` section, and
returns the method's overrides plus whether it needs verl's teacher pool. Method parameters verl cannot
express raise ``ConfigError`` instead of being dropped silently.

    grpo, grpo_no_std   estimator opdkit_grpo; with verl.sc_weighting: opdkit_sc_grpo (SC pass-rate weights)
    opd                 verl's distillation, k1 as a policy-gradient reward (§3.1); with verl.sc_weighting:
                        the SC-weighted losses opdkit_sc_k1 / opdkit_sc_k3 / opdkit_sc_forward_kl_topk (§6.2)
    scope               trainer opdkit_sync (weighting=scope) + loss opdkit_scope (§5); dual_path=false is OPD
    sdpo family, srpo   trainer opdkit_sdpo with the self-teacher on the actor pool (config_sdpo.py)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opdkit.core.registry import Registry
from opdkit.integrations.verl.params import CONFIG_NODE


class ConfigError(ValueError):
    """An opdkit config that cannot be mapped to verl; the message names the key and the valid choices."""


@dataclass(frozen=True)
class MethodPlan:
    """A method's verl overrides, whether it runs verl's teacher pool, and whether it reads the config's
    ``self_teacher`` section (the SDPO family)."""

    overrides: dict[str, Any]
    needs_teacher: bool = False
    needs_self_teacher: bool = False


PLANS: Registry[Callable[[Any, dict[str, Any]], MethodPlan]] = Registry("verl method")

SC_WEIGHTINGS = ("none", "pass_rate", "hard_filter")
#: verl.sc_divergence -> (loss mode, used as a policy-gradient reward?). k1 as a reward is OPD (§3.1); k3 and
#: verl's top-k forward KL are supervised losses (verl's recommendation for them).
SC_DIVERGENCES = {
    "k1": ("opdkit_sc_k1", True),
    "k3": ("opdkit_sc_k3", False),
    "forward_kl_topk": ("opdkit_sc_forward_kl_topk", False),
}
DISTILL_DUAL_CLIP = 3.0  # verl's distillation policy loss reads clip_ratio_c from a config without one: 3.0


def _require_default(method: Any, key: str, default: Any, why: str) -> None:
    value = getattr(method, key)
    if value != default:
        raise ConfigError(f"method.{key}={value!r} is not supported on verl ({why}); use {default!r}")


def _opdkit_node(values: dict[str, Any]) -> dict[str, Any]:
    """``+algorithm.opdkit.KEY`` overrides (the node is not in verl's config, hence the ``+``)."""
    return {f"+{CONFIG_NODE}.{key}": value for key, value in values.items()}


def _policy_clip(method: Any) -> dict[str, Any]:
    if method.dual_clip is None:
        raise ConfigError("method.dual_clip=null is not supported on verl (its PPO loss always dual-clips)")
    return {
        "actor_rollout_ref.actor.clip_ratio_low": method.clip_low,
        "actor_rollout_ref.actor.clip_ratio_high": method.clip_high,
        "actor_rollout_ref.actor.clip_ratio_c": method.dual_clip,
        "actor_rollout_ref.actor.loss_agg_mode": method.agg,
    }


def _sc(verl: dict[str, Any]) -> dict[str, Any]:
    return {"weighting": verl["sc_weighting"], "sc_alpha": verl["sc_alpha"]}


def _grpo(method: Any, verl: dict[str, Any]) -> MethodPlan:
    _require_default(method, "eps", 1e-6, "verl's GRPO uses ε = 1e-6")
    estimator = "opdkit_grpo" if verl["sc_weighting"] == "none" else "opdkit_sc_grpo"
    overrides = {
        "algorithm.adv_estimator": estimator,
        "algorithm.norm_adv_by_std_in_grpo": method.normalize_std,
        **_policy_clip(method),
    }
    if estimator == "opdkit_sc_grpo":
        overrides.update(_opdkit_node(_sc(verl)))
    return MethodPlan(overrides)


PLANS.add("grpo", _grpo)
PLANS.add("grpo_no_std", _grpo)


def _distillation(
    loss_mode: str, *, policy_gradient: bool, method: Any, agg: str | None = None
) -> dict[str, Any]:
    if policy_gradient and method.dual_clip != DISTILL_DUAL_CLIP:
        raise ConfigError(
            f"method.dual_clip must be {DISTILL_DUAL_CLIP} on verl (its distillation loss fixes it)"
        )
    prefix = "distillation.distillation_loss."
    return {
        "distillation.enabled": True,
        f"{prefix}loss_mode": loss_mode,
        f"{prefix}use_policy_gradient": policy_gradient,
        f"{prefix}use_task_rewards": False,
        f"{prefix}loss_max_clamp": None,
        f"{prefix}clip_ratio_low": method.clip_low,
        f"{prefix}clip_ratio_high": method.clip_high,
        "actor_rollout_ref.actor.loss_agg_mode": agg or method.agg,
        "algorithm.adv_estimator": "grpo",  # verl computes it, nothing uses it (use_task_rewards=false)
    }


def _opd(method: Any, verl: dict[str, Any]) -> MethodPlan:
    _require_default(method, "coef", 1.0, "verl's k1 reward has no scale")
    _require_default(method, "discount", 0.0, "verl's k1 reward is per token")
    if verl["sc_weighting"] == "none":  # A = −(logp − logp_T) through verl's PPO clip (§3.1)
        return MethodPlan(_distillation("k1", policy_gradient=True, method=method), needs_teacher=True)
    loss_mode, policy_gradient = SC_DIVERGENCES[verl["sc_divergence"]]
    overrides = {
        **_distillation(loss_mode, policy_gradient=policy_gradient, method=method),
        **_opdkit_node(_sc(verl)),
        "trainer.v1.trainer_mode": "opdkit_sync",
    }
    if verl["sc_divergence"] == "forward_kl_topk":
        overrides["distillation.distillation_loss.topk"] = verl["sc_topk"]
    return MethodPlan(overrides, needs_teacher=True)


PLANS.add("opd", _opd)


def _scope(method: Any, verl: dict[str, Any]) -> MethodPlan:
    if verl["sc_weighting"] != "none":
        raise ConfigError("verl.sc_weighting applies to grpo and opd, not scope")
    _require_default(method, "loss_averaging", "minibatch", "the plugin's token means span the mini-batch")
    if not method.dual_path:  # §5.6: dual path off is plain OPD on every rollout
        return MethodPlan(_distillation("k1", policy_gradient=True, method=method), needs_teacher=True)
    if method.agg not in ("code", "joint"):
        raise ConfigError(f"method.agg: unknown {method.agg!r}; valid: code, joint")
    if method.dual_clip is None:
        raise ConfigError("method.dual_clip=null is not supported on verl (its PPO loss always dual-clips)")
    student_exponent, teacher_exponent = method.exponents()
    node = {
        "weighting": "scope",
        "scope_tau": method.tau,
        "scope_student_exponent": student_exponent,
        "scope_teacher_exponent": teacher_exponent,
        "scope_normalization": method.normalization,
        "scope_agg": method.agg,
        "scope_use_student_weights": method.use_seq_weights and method.use_student_weights,
        "scope_use_teacher_weights": method.use_seq_weights and method.use_teacher_weights,
    }
    # verl aggregates opdkit_scope's per-token loss with one token-mean; the driver's MLE scale turns it
    # into the code or joint form (method.agg), so verl's own mode is always token-mean.
    overrides = {
        **_distillation("opdkit_scope", policy_gradient=False, method=method, agg="token-mean"),
        "actor_rollout_ref.actor.clip_ratio_c": method.dual_clip,  # opdkit_scope's dual clip
        **_opdkit_node(node),
        "trainer.v1.trainer_mode": "opdkit_sync",
    }
    return MethodPlan(overrides, needs_teacher=True)


PLANS.add("scope", _scope)
