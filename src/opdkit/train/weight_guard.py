"""Weight-health guard: an optimizer update is applied only if the weights it produces are healthy.

An update ``Δθ`` is *refused* when the new weights ``θ + Δθ`` would hold a non-finite value (in the
parameters' own dtype, so a float16 overflow counts) or when it is exploding:

    ρ = ||Δθ||₂ / ||θ||₂ > optim.max_update_ratio        (norms over all trainable parameters)

Why this criterion: Adam moves every weight by about ``lr`` per update (``m̂/√v̂`` is about ±1), so
``ρ ≈ lr / rms(θ)``; fine-tuning (lr 1e-6..1e-4, weights of rms 0.01..0.05) gives ρ of 1e-4..1e-2. ``ρ ≥ 1``
means the update is as large as the weights themselves; the default bound, 10, leaves room for deliberately
aggressive toy settings (lr 0.05 on a tiny model of rms 0.046 gives ρ ≈ 1.1) and still refuses ``lr=1e10``
(ρ ~ 1e11) on its first update. The criterion is scale-free (an absolute bound on |θ| would differ between
models) and costs two reductions. It catches a sudden explosion, not a slow drift: weights that grow a little
at every update keep ρ small. When ``||θ|| = 0`` only finiteness is checked.

A refused update leaves everything as before it: parameters, optimizer moments and step counts, and (in the
caller) the learning-rate scheduler and the EMA self-teacher, which are only advanced after an applied update.

Cost, and why not a snapshot. For ``torch.optim.AdamW`` (what the trainer builds) the update is *predicted*
before it is applied, from the clipped gradient and the optimizer's moments, chunk by chunk, with the same
equations as ``AdamW.step`` (``core.optim.adamw_new_weights``); a refused update is simply never applied, so
the rollback needs no copy. Extra memory: a few float32 buffers of at most ``_CHUNK`` elements (16 MiB each);
extra time: one more read of θ, g, m and v, about what the optimizer step itself costs (on an 8B model,
~100 GB at a few TB/s: tens of ms, against seconds for the forward and backward passes). A snapshot and
restore instead would hold a second copy of the weights and both Adam moments: at 8B with bfloat16 weights and
float32 moments that is ~80 GB, which does not fit next to the model on one 141 GB GPU and takes seconds per
update to copy to host memory. Other optimizers (not built by the trainer; tests use SGD) fall back to that
snapshot (kept on the parameters' device), which is only reasonable for small models.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from opdkit.core.optim import AdamWSettings, adamw_new_weights

_CHUNK = 1 << 22  # elements per predicted chunk: bounded temporary memory whatever the tensor size


@dataclass(frozen=True)
class UpdateCheck:
    """Whether an update was applied, its relative size ρ = ||Δθ||/||θ|| and, when refused, why."""

    applied: bool
    ratio: float
    reason: str = ""


def guarded_step(optimizer: torch.optim.Optimizer, max_ratio: float) -> UpdateCheck:
    """``optimizer.step()`` if the update is finite and ``ρ <= max_ratio`` (``max_ratio <= 0``: finiteness
    only); otherwise parameters and optimizer state are left exactly as they were."""
    if _predictable(optimizer):
        check = _judge(*_predict_adamw(optimizer), max_ratio)
        if check.applied:
            optimizer.step()
        return check
    return _snapshot_step(optimizer, max_ratio)


def _judge(delta_sq: float, theta_sq: float, finite: bool, max_ratio: float) -> UpdateCheck:
    ratio = math.sqrt(delta_sq / theta_sq) if theta_sq > 0 else 0.0
    if not finite:
        return UpdateCheck(False, math.inf, "the update makes the weights non-finite")
    if max_ratio > 0 and ratio > max_ratio:
        return UpdateCheck(False, ratio, f"update norm {ratio:.3g}x the weights' norm > {max_ratio:g}")
    return UpdateCheck(True, ratio)


def _predictable(optimizer: torch.optim.Optimizer) -> bool:
    """Plain AdamW, whose update ``_predict_adamw`` reproduces (AMSGrad and maximize are not)."""
    if type(optimizer) is not torch.optim.AdamW:
        return False
    return not any(g.get("amsgrad") or g.get("maximize") for g in optimizer.param_groups)


@torch.no_grad()
def _predict_adamw(optimizer: torch.optim.Optimizer) -> tuple[float, float, bool]:
    """(||Δθ||², ||θ||², θ+Δθ finite) of the update ``optimizer.step()`` would make, without making it.

    θ+Δθ is ``core.optim.adamw_new_weights`` (AdamW's equations). Sums accumulate on each parameter's device
    and are read once at the end (no per-chunk host sync).
    """
    sums: dict[torch.device, torch.Tensor] = {}  # device -> [Σ Δθ², Σ θ², count of non-finite θ']
    for group in optimizer.param_groups:
        beta1, beta2 = (float(b) for b in group["betas"])
        settings = AdamWSettings(
            float(group["lr"]), beta1, beta2, float(group["eps"]), float(group["weight_decay"])
        )
        for p in group["params"]:
            if p.grad is None:
                continue  # AdamW leaves it untouched
            acc = sums.setdefault(p.device, torch.zeros(3, device=p.device))
            state = optimizer.state.get(p, {})
            t = float(state["step"]) + 1 if "step" in state else 1.0
            for lo in range(0, p.numel(), _CHUNK):
                acc += _adamw_chunk(p, state, settings, t, slice(lo, lo + _CHUNK))
    total = sum((a.cpu() for a in sums.values()), torch.zeros(3))
    return float(total[0]), float(total[1]), bool(total[2] == 0)


def _adamw_chunk(p: torch.Tensor, state: dict, settings: AdamWSettings, t: float, sl: slice) -> torch.Tensor:
    """[Σ Δθ², Σ θ², non-finite count] of one flat chunk of ``p``, in float32 (see ``_predict_adamw``)."""

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(-1)[sl]

    theta = flat(p).float()
    m, v = (flat(state["exp_avg"]), flat(state["exp_avg_sq"])) if "exp_avg" in state else (None, None)
    new = adamw_new_weights(theta, flat(p.grad), m, v, t, settings)
    bad = (~torch.isfinite(new.to(p.dtype))).sum()
    return torch.stack([(new - theta).square().sum(), theta.square().sum(), bad.float()])


def _total(parts: list[torch.Tensor]) -> float:
    return float(sum(float(x) for x in parts))


@torch.no_grad()
def _snapshot_step(optimizer: torch.optim.Optimizer, max_ratio: float) -> UpdateCheck:
    """Any optimizer: copy parameters and optimizer state, step, judge, restore the copies if refused."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    before = [p.detach().clone() for p in params]
    saved = copy.deepcopy(optimizer.state_dict())
    optimizer.step()
    delta_sq = _total([(p.float() - b.float()).square().sum() for p, b in zip(params, before, strict=True)])
    theta_sq = _total([b.float().square().sum() for b in before])
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    check = _judge(delta_sq, theta_sq, finite, max_ratio)
    if not check.applied:
        for p, b in zip(params, before, strict=True):
            p.copy_(b)
        optimizer.load_state_dict(saved)
    return check
