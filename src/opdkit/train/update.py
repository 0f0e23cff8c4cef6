"""The gradient part of a step: mini-batches (optimizer updates) of micro-batches (forward/backward).

``mini_batches = 1`` is the on-policy setting of every paper's main runs: one optimizer update per step, the
PPO ratio is exactly 1. With more, the step's *groups* are split evenly (rows of a group stay together, so
group-level quantities stay whole) and updates 2.. are off-policy, where clipping matters (§2.2).

Each mini-batch's loss denominators are computed from the whole mini-batch first, so summing the micro-batch
losses equals the loss of the whole mini-batch (``core.losses.aggregate(global_denominator=...)``). A
non-finite loss or gradient norm skips that update: gradients are dropped, the optimizer, scheduler and EMA
teacher are untouched, and the skip is counted.

A step without signal (the method's ``skip_reason``: every advantage 0, no informative question, no teacher
scores) makes no update by default. ``step_without_signal`` is the reference trainers' behaviour instead
(``optim.step_on_empty: true``): their loss is an exact 0, its gradient a zero tensor, and the optimizer still
steps on it, so AdamW's momentum and weight decay move the weights, the scheduler advances and the EMA
teacher follows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from opdkit.core.groups import group_index
from opdkit.train.batch import Prepared, StepBatch, micro_batch_size
from opdkit.train.methods.base import Method, MethodContext
from opdkit.train.precision import LossScaler, autocast


@dataclass
class UpdateStats:
    """Per-step results of the updates: loss parts averaged over updates, counts of what happened."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    updates: int = 0
    nonfinite_skips: int = 0

    def as_metrics(self) -> dict[str, float]:
        out = {
            f"loss/{k}" if k != "grad_norm" else "grad/norm": sum(v) / len(v) for k, v in self.values.items()
        }
        out["train/updates"] = float(self.updates)
        out["train/nonfinite_skips"] = float(self.nonfinite_skips)
        return out


def mini_batch_rows(batch: StepBatch, count: int) -> list[torch.Tensor]:
    """Row indices of ``count`` mini-batches made of whole groups, in batch order."""
    if count <= 1:
        return [torch.arange(batch.n)]
    idx = group_index(batch.group_ids_N)
    group_chunks = torch.arange(idx.num_groups).tensor_split(count)
    rows = []
    for groups in group_chunks:
        member = torch.isin(idx.inverse_N, groups)
        if member.any():
            rows.append(member.nonzero().squeeze(-1))
    return rows


def _micro_rows(n: int, size: int) -> list[torch.Tensor]:
    return list(torch.arange(n).split(size or n))


@dataclass(frozen=True)
class UpdateSettings:
    """``dtype``: the compute dtype of the forwards (``train.precision``; the weights stay float32);
    ``scaler``: the run's ``LossScaler`` (float16 needs one; None = plain backward and step)."""

    mini_batches: int
    micro_batch_size: int
    grad_clip: float
    dtype: str = "float32"
    scaler: LossScaler | None = None
    micro_batch_tokens: int = 0  # token budget per forward/backward (``batch.micro_batch_size``)


def run_updates(
    method: Method,
    method_cfg: Any,
    batch: StepBatch,
    prepared: Prepared,
    ctx: MethodContext,
    optim: tuple[torch.optim.Optimizer, Any],
    settings: UpdateSettings,
) -> UpdateStats:
    """All optimizer updates of one step; the EMA self-teacher follows each successful update (§4.6)."""
    optimizer, scheduler = optim
    stats = UpdateStats()
    scaler = settings.scaler or LossScaler("float32", "cpu")
    device = next(ctx.student.parameters()).device
    params = [p for p in ctx.student.parameters() if p.requires_grad]
    mini_batches = mini_batch_rows(batch, settings.mini_batches)
    if batch.old_logp_N_T is None and len(mini_batches) > 1:
        # updates after the first are off-policy: the current log-probs are no longer the old ones (§2.2)
        raise ValueError("several updates per step need the old log-probs (RolloutRequest.old_logprobs)")
    for rows in mini_batches:
        mini, mini_prep = batch.select(rows), prepared.select(rows)
        denoms = method.denominators(method_cfg, mini, mini_prep)
        optimizer.zero_grad(set_to_none=True)
        total, finite = 0.0, True
        size = micro_batch_size(mini, settings.micro_batch_size, settings.micro_batch_tokens)
        for micro in _micro_rows(mini.n, size):
            with autocast(settings.dtype, device):
                out = method.loss(method_cfg, mini.select(micro), mini_prep.select(micro), denoms, ctx)
            if not torch.isfinite(out.loss):
                finite = False
                break
            scaler.backward(out.loss)
            total += float(out.loss.detach())
            for k, v in out.metrics.items():
                stats.values[k].append(v)
        clip = settings.grad_clip if settings.grad_clip > 0 else math.inf
        if finite:
            scaler.unscale(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if finite else math.nan
        if not (finite and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            scaler.skip()
            stats.nonfinite_skips += 1
            continue
        scaler.step(optimizer)
        scheduler.step()
        if ctx.self_teacher is not None:
            ctx.self_teacher.update(ctx.student)
        stats.updates += 1
        stats.values["total"].append(total)
        stats.values["grad_norm"].append(grad_norm)
    optimizer.zero_grad(set_to_none=True)  # free the gradients before the next rollout needs the memory
    return stats


def step_without_signal(
    student: torch.nn.Module, self_teacher: Any, optim: tuple[torch.optim.Optimizer, Any], updates: int
) -> UpdateStats:
    """``updates`` optimizer steps on an all-zero gradient, each followed by the scheduler and EMA updates.

    AdamW on g = 0 (after k earlier steps): m ← β1·m, v ← β2·v, θ ← θ·(1 − lr·wd) − lr·m̂/(√v̂ + ε), so the
    weights move unless m = 0 and wd = 0. Gradients are set to zeros, not None: torch skips a None grad.
    """
    optimizer, scheduler = optim
    stats = UpdateStats()
    for _ in range(updates):
        optimizer.zero_grad(set_to_none=True)
        for p in student.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        scheduler.step()
        if self_teacher is not None:
            self_teacher.update(student)
        stats.updates += 1
        stats.values["total"].append(0.0)
        stats.values["grad_norm"].append(0.0)
    optimizer.zero_grad(set_to_none=True)
    return stats
