"""AdamW's update as a pure function, so an update can be judged before it is applied.

``torch.optim.AdamW`` at step t (t counts from 1), for a parameter θ with gradient g and moments m, v (zero
before the first step):

    m' = β₁·m + (1 − β₁)·g,        v' = β₂·v + (1 − β₂)·g²
    θ' = θ·(1 − lr·λ) − lr/(1 − β₁ᵗ) · m' / (√v' / √(1 − β₂ᵗ) + ε)

with λ the decoupled weight decay (no decay when λ = 0). The trainer's weight guard (``train.weight_guard``)
predicts θ' with ``adamw_new_weights`` to refuse an exploding update without keeping a copy of the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdamWSettings:
    """One AdamW parameter group's settings: learning rate, (β₁, β₂), ε, decoupled weight decay λ."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float


def adamw_new_weights(
    theta: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor | None,
    exp_avg_sq: torch.Tensor | None,
    step: float,
    settings: AdamWSettings,
) -> torch.Tensor:
    """θ' after AdamW's step number ``step`` (module docstring), elementwise, in float32.

    ``exp_avg`` / ``exp_avg_sq``: the moments m, v before this step (None before the first step: zeros).
    Every input has the same shape (any); nothing is modified.
    """
    s = settings
    g = grad.float()
    m, v = (1 - s.beta1) * g, (1 - s.beta2) * g * g
    if exp_avg is not None and exp_avg_sq is not None:
        m = m + s.beta1 * exp_avg.float()
        v = v + s.beta2 * exp_avg_sq.float()
    theta = theta.float()
    decayed = theta * (1 - s.lr * s.weight_decay) if s.weight_decay != 0 else theta
    bias1, bias2 = 1 - s.beta1**step, 1 - s.beta2**step
    return decayed - (s.lr / bias1) * m / (v.sqrt() / math.sqrt(bias2) + s.eps)
