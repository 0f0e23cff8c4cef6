"""Settings of the ``opdkit_sdpo`` trainer (``algorithm.opdkit_sdpo``) and what it refuses, with the reason.

One free-form Hydra node (``+algorithm.opdkit_sdpo.KEY=VALUE``; unknown keys are rejected listing the valid
ones). Keys and defaults (``opdkit train``'s, docs/algorithms.md §4, §6, §7):

    method            sdpo      sdpo | sc_sdpo | sdpo_hard_filter | sdpo_paced | srpo
    teacher_mode      ema       ema (rate teacher_update_rate after each optimizer step) | base | live
    teacher_update_rate 0.05    η of the EMA
    alpha 0.5, top_k 100, tail true, is_clip 2.0, chunk_tokens 256       the loss (§4.7)
    success_threshold 0.5, sc_alpha 0.5                                  question weights (§6)
    srpo_normalize_std false, srpo_beta 1.0, clip_low 0.2, clip_high 0.28, dual_clip 3.0   SRPO (§7.4)
    include_environment_feedback false, feedback_key feedback, max_reprompt_len 10240       teacher context

No verl, no torch: ``opdkit verl-config`` uses it in any environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

CONFIG_NODE = "algorithm.opdkit_sdpo"
TRAINER_MODE = "opdkit_sdpo"
METHODS = ("sdpo", "sc_sdpo", "sdpo_hard_filter", "sdpo_paced", "srpo")


@dataclass(frozen=True)
class SdpoVerlParams:
    """The keys of ``algorithm.opdkit_sdpo`` (module docstring)."""

    method: str = "sdpo"
    teacher_mode: str = "ema"
    teacher_update_rate: float = 0.05
    alpha: float = 0.5
    top_k: int = 100
    tail: bool = True
    is_clip: float = 2.0
    chunk_tokens: int = 256
    success_threshold: float = 0.5
    sc_alpha: float = 0.5
    srpo_normalize_std: bool = False
    srpo_beta: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    include_environment_feedback: bool = False
    feedback_key: str = "feedback"
    max_reprompt_len: int = 10240

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"{CONFIG_NODE}.method: unknown {self.method!r}; valid: {', '.join(METHODS)}")
        if self.teacher_mode not in ("ema", "base", "live"):
            raise ValueError(
                f"{CONFIG_NODE}.teacher_mode: unknown {self.teacher_mode!r}; valid: ema, base, live"
            )
        if not 0.0 <= self.teacher_update_rate <= 1.0:
            raise ValueError(f"{CONFIG_NODE}.teacher_update_rate must be in [0, 1]")


_KEYS = {f.name: f for f in fields(SdpoVerlParams)}
_BOOLS = {"true": True, "false": False}


def _convert(key: str, value: Any) -> Any:
    kind = str(_KEYS[key].type)
    if kind == "bool":
        if isinstance(value, bool) or str(value).lower() in _BOOLS:
            return value if isinstance(value, bool) else _BOOLS[str(value).lower()]
        raise ValueError(f"{CONFIG_NODE}.{key}: expected true/false, got {value!r}")
    convert = {"str": str, "int": int, "float": float}[kind]
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ValueError(f"{CONFIG_NODE}.{key}: expected a {kind}, got {value!r}") from None


def parse_sdpo_params(node: Mapping[str, Any] | None) -> SdpoVerlParams:
    """``algorithm.opdkit_sdpo`` (dict or DictConfig, or None) -> validated parameters."""
    if node is None:
        return SdpoVerlParams()
    unknown = sorted(set(node) - set(_KEYS))
    if unknown:
        named = ", ".join(f"{CONFIG_NODE}.{k}" for k in unknown)
        raise KeyError(f"unknown key(s) {named}; valid: {', '.join(_KEYS)}")
    return SdpoVerlParams(**{key: _convert(key, node[key]) for key in node})


def _get(config: Any, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def unsupported(config: Any) -> list[str]:
    """What the plugin cannot honour in this verl config, each with its reason (empty: supported)."""
    problems = []
    lora = _get(config, "actor_rollout_ref.model.lora_rank", 0) or _get(
        config, "actor_rollout_ref.model.lora.rank", 0
    )
    if int(lora or 0) > 0 or _get(config, "actor_rollout_ref.model.lora_adapter_path") is not None:
        problems.append(
            "LoRA: verl then uses the actor itself as the reference model, so there is no separate model to "
            "hold the EMA (or base) self-teacher"
        )
    if int(_get(config, "actor_rollout_ref.actor.ulysses_sequence_parallel_size", 1) or 1) > 1:
        problems.append(
            "sequence parallelism > 1: the teacher's response positions are taken from each micro-batch's "
            "own packing, which Ulysses splits over ranks"
        )
    mode = _get(config, "trainer.v1.trainer_mode", TRAINER_MODE)
    if mode != TRAINER_MODE:
        problems.append(
            f"trainer.v1.trainer_mode={mode}: only the synchronous {TRAINER_MODE} trainer builds teacher "
            "contexts from the step's own rewards and updates the EMA teacher after each optimizer step "
            "(asynchronous trainers train on older rollouts than the teacher)"
        )
    if bool(_get(config, "distillation.enabled", False)):
        problems.append(
            "distillation.enabled=true: the self-teacher replaces verl's teacher pool; set it false"
        )
    return problems


def check_supported(config: Any) -> None:
    problems = unsupported(config)
    if problems:
        raise ValueError("the opdkit_sdpo trainer cannot run this config:\n- " + "\n- ".join(problems))
