"""``opdkit verl-config`` plans of the SDPO family (sdpo, sc_sdpo, sdpo_hard_filter, sdpo_paced, srpo): the
``opdkit_sdpo`` trainer with ``algorithm.opdkit_sdpo`` (``sdpo_params.py``) built from the method and
``self_teacher`` sections of the opdkit config. No verl import.

Every method runs on the actor pool only (the self-teacher is verl's reference model in the same workers,
or the actor itself for ``live``): no teacher pool, so ``trainer.n_gpus_per_node × nnodes`` GPUs in all.
The reference role is turned on explicitly (``use_kl_loss=true`` with coefficient 0: verl builds a ref
model only then; the plugin's loss replaces verl's, so no KL term is computed) so that verl's own
``validate_config`` checks the ref's micro-batch settings. Settings the plugin cannot honour raise
``ConfigError``: a sampled-token surrogate (``full_logit=false``), other aggregations, the trust-region
teacher, non-default reprompt templates, and SRPO's top-k entropy.
"""

from __future__ import annotations

from typing import Any

from opdkit.integrations.verl.config_methods import PLANS, ConfigError, MethodPlan
from opdkit.integrations.verl.sdpo_params import CONFIG_NODE, TRAINER_MODE

#: self_teacher keys the plugin carries; every other key must keep its default.
_TEACHER_KEYS = {
    "weights": "teacher_mode",
    "update_rate": "teacher_update_rate",
    "include_environment_feedback": "include_environment_feedback",
    "max_reprompt_len": "max_reprompt_len",
}


def _require(method: Any, key: str, value: Any, why: str) -> None:
    if getattr(method, key) != value:
        raise ConfigError(
            f"method.{key}={getattr(method, key)!r} is not supported on verl ({why}); use {value!r}"
        )


def self_teacher_node(options: Any) -> dict[str, Any]:
    """The opdkit config's ``self_teacher`` section -> ``algorithm.opdkit_sdpo`` keys."""
    from dataclasses import fields

    default = type(options)()
    for f in fields(options):
        if f.name not in _TEACHER_KEYS and getattr(options, f.name) != getattr(default, f.name):
            raise ConfigError(f"self_teacher.{f.name} is not supported on verl: keep its default")
    if options.weights not in ("ema", "base", "live"):
        raise ConfigError(f"self_teacher.weights={options.weights!r} on verl: valid: ema, base, live")
    return {target: getattr(options, key) for key, target in _TEACHER_KEYS.items()}


def _loss_node(method: Any) -> dict[str, Any]:
    _require(method, "full_logit", True, "the plugin distils the full-logit top-k divergence")
    if method.is_clip is None:
        raise ConfigError("method.is_clip=null is not supported on verl; give a cap (the reference uses 2.0)")
    node = {"method": method.name, "alpha": method.alpha, "top_k": method.top_k, "tail": method.tail}
    node["is_clip"] = method.is_clip
    if method.top_k is None:
        raise ConfigError("method.top_k=null (full vocabulary) is not supported on verl; give a k (100)")
    return node


def _overrides(node: dict[str, Any]) -> dict[str, Any]:
    out = {f"+{CONFIG_NODE}.{key}": value for key, value in node.items()}
    out.update({
        "trainer.v1.trainer_mode": TRAINER_MODE,
        "actor_rollout_ref.actor.use_kl_loss": True,  # the ref role (module docstring)
        "actor_rollout_ref.actor.kl_loss_coef": 0.0,
        "data.return_raw_chat": True,  # the teacher context re-applies the chat template to raw_prompt
        "algorithm.adv_estimator": "grpo",  # verl computes it; only SRPO's own advantage is used
    })  # fmt: skip
    return out


def _sdpo_family(method: Any, verl: dict[str, Any]) -> MethodPlan:
    if verl["sc_weighting"] != "none":
        raise ConfigError("verl.sc_weighting applies to grpo and opd; use method.name=sc_sdpo")
    _require(method, "agg", "seq-mean-token-mean", "the plugin aggregates as opdkit train's default")
    _require(method, "denominator", "per_sequence_all", "the plugin divides by the mini-batch's sequences")
    node = _loss_node(method)
    if method.name == "sc_sdpo":
        node["sc_alpha"] = method.sc_alpha
    if method.name == "sdpo_paced" and (method.kernel_a, method.kernel_b) != (1.0, 1.0):
        node_note = "compute the weights with these kernel exponents offline (docs/verl.md)"
        raise ConfigError(f"method.kernel_a/kernel_b other than 1 on verl: {node_note}")
    return MethodPlan(_overrides(node), needs_self_teacher=True)


def _srpo(method: Any, verl: dict[str, Any]) -> MethodPlan:
    if verl["sc_weighting"] != "none":
        raise ConfigError("verl.sc_weighting applies to grpo and opd, not srpo")
    _require(method, "entropy", "full", "the ref worker's entropy is over the full vocabulary")
    _require(method, "eps", 1e-6, "the plugin's GRPO branch uses ε = 1e-6")
    if method.dual_clip is None:
        raise ConfigError("method.dual_clip=null is not supported on verl; give a constant (3.0)")
    node = _loss_node(method)
    node.update({
        "srpo_normalize_std": method.normalize_std, "srpo_beta": method.beta, "clip_low": method.clip_low,
        "clip_high": method.clip_high, "dual_clip": method.dual_clip,
    })  # fmt: skip
    return MethodPlan(_overrides(node), needs_self_teacher=True)


for _name in ("sdpo", "sc_sdpo", "sdpo_hard_filter", "sdpo_paced"):
    PLANS.add(_name, _sdpo_family)
PLANS.add("srpo", _srpo)
