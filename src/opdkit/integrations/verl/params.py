"""The opdkit parameters a verl run reads, and the names of the fields the plugin adds to verl's batches.

verl's own config dataclasses reject unknown keys, so opdkit's parameters live in one free-form node of the
Hydra config, ``algorithm.opdkit`` (added with ``+algorithm.opdkit.KEY=VALUE``). The driver reads it in two
places: the advantage estimators (verl passes them ``config=algorithm``) and the ``opdkit_sync`` trainer's
advantage step. Workers never read it: the driver writes everything a loss needs into per-token batch
fields (``FIELD_*`` below), so the loss functions take no parameters beyond verl's own.

This module imports neither verl nor torch, so ``opdkit verl-config`` can use it in any environment.

Keys of ``algorithm.opdkit`` (all optional, defaults below):

    weighting               none | scope | pass_rate | hard_filter   per-sequence weights the trainer writes
    success_threshold       0.5    c_i = 1[r_i >= threshold] (docs/algorithms.md §1.4)
    sc_alpha                0.5    SC-SDPO exponent α of (p(1-p))^α (§6.1)
    scope_tau               1.0    SCOPE temperature τ (§5.4)
    scope_student_exponent  1.0    w_stu ∝ PPL_S^(exponent/τ); +1 = paper (§5.6, §11 A1)
    scope_teacher_exponent  -1.0   w_tea ∝ PPL_T^(exponent/τ); -1 = paper
    scope_normalization     mean1  mean1 | sum1 (§5.4)
    scope_agg               code   code | joint (§5.5)
    scope_use_student_weights  true   false: weight 1 on every correct rollout (§5.6 ablation)
    scope_use_teacher_weights  true   false: weight 1 on every wrong rollout (§5.6 ablation)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: Where the parameters live in verl's Hydra config.
CONFIG_NODE = "algorithm.opdkit"

#: Per-token batch fields the ``opdkit_sync`` trainer writes (constant over each response's tokens).
FIELD_Q_WEIGHT = "opdkit_q_weight"  # SC / hard-filter question weight w_q(i)
FIELD_W_STUDENT = "opdkit_w_student"  # SCOPE student-path weight (0 on wrong rows)
FIELD_W_TEACHER = "opdkit_w_teacher"  # SCOPE teacher-path weight (0 on correct rows)
FIELD_CORRECT = "opdkit_correct"  # 1.0 on correct rows, 0.0 on wrong rows
FIELD_MLE_SCALE = "opdkit_mle_scale"  # factor that turns one token-mean into SCOPE's two (§5.5 "code")

WEIGHTINGS = ("none", "scope", "pass_rate", "hard_filter")
SCOPE_NORMALIZATIONS = ("mean1", "sum1")
SCOPE_AGGREGATIONS = ("code", "joint")


@dataclass(frozen=True)
class OpdkitVerlParams:
    """Parameters of ``algorithm.opdkit`` (see the module docstring for each key)."""

    weighting: str = "none"
    success_threshold: float = 0.5
    sc_alpha: float = 0.5
    scope_tau: float = 1.0
    scope_student_exponent: float = 1.0
    scope_teacher_exponent: float = -1.0
    scope_normalization: str = "mean1"
    scope_agg: str = "code"
    scope_use_student_weights: bool = True
    scope_use_teacher_weights: bool = True

    def __post_init__(self) -> None:
        _check_choice("weighting", self.weighting, WEIGHTINGS)
        _check_choice("scope_normalization", self.scope_normalization, SCOPE_NORMALIZATIONS)
        _check_choice("scope_agg", self.scope_agg, SCOPE_AGGREGATIONS)
        if self.scope_tau <= 0:
            raise ValueError(f"{CONFIG_NODE}.scope_tau must be > 0, got {self.scope_tau}")
        if self.sc_alpha <= 0:
            raise ValueError(f"{CONFIG_NODE}.sc_alpha must be > 0, got {self.sc_alpha}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{CONFIG_NODE}.{key}: unknown value {value!r}; valid: {', '.join(choices)}")


_KEYS = {f.name: f for f in fields(OpdkitVerlParams)}


def parse_params(node: Mapping[str, Any] | None) -> OpdkitVerlParams:
    """``algorithm.opdkit`` (a dict or an OmegaConf DictConfig, or None) -> validated parameters.

    Unknown keys raise a ``KeyError`` naming the key and the valid ones; values are converted to the
    field's type (``"0.5"`` from the command line becomes 0.5).
    """
    if node is None:
        return OpdkitVerlParams()
    unknown = sorted(set(node) - set(_KEYS))
    if unknown:
        named = ", ".join(f"{CONFIG_NODE}.{k}" for k in unknown)
        raise KeyError(f"unknown key(s) {named}; valid: {', '.join(_KEYS)}")
    values = {key: _convert(key, node[key]) for key in node}
    return OpdkitVerlParams(**values)


_BOOLS = {"true": True, "false": False}


def _convert(key: str, value: Any) -> Any:
    kind = str(_KEYS[key].type)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in _BOOLS:
            return _BOOLS[str(value).lower()]
        raise ValueError(f"{CONFIG_NODE}.{key}: expected true/false, got {value!r}")
    convert = str if kind == "str" else float
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ValueError(f"{CONFIG_NODE}.{key}: expected a {convert.__name__}, got {value!r}") from None
