"""The gradient part of a step: mini-batches (optimizer updates) of micro-batches (forward/backward).

``mini_batches = 1`` is the on-policy setting of every paper's main runs: one optimizer update per step, the
PPO ratio is exactly 1. With more, the step's *groups* are split evenly (rows of a group stay together, so
group-level quantities stay whole) and updates 2.. are off-policy, where clipping matters (§2.2).

Each mini-batch's loss denominators are computed from the whole mini-batch first, so summing the micro-batch
losses equals the loss of the whole mini-batch (``core.losses.aggregate(global_denominator=...)``). A
non-finite loss or gradient norm skips that update: gradients are dropped, the optimizer, scheduler and EMA
teacher are untouched, and the skip is counted. An update whose new weights would be non-finite or exploding
is refused the same way by the weight-health guard (``weight_guard``) and counted as a weight rollback.
``bad_streak`` counts refused updates of either kind in a row, across steps; the loop stops the run when it
reaches ``optim.max_bad_updates``.

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
from opdkit.core.losses import LossOutput
from opdkit.train.batch import Prepared, R, StepBatch, micro_batch_size
from opdkit.train.methods.base import Method, MethodConfig, MethodContext
from opdkit.train.precision import LossScaler, autocast
from opdkit.train.state import Optim
from opdkit.train.weight_guard import guarded_step


@dataclass
class UpdateStats:
    """Per-step results of the updates: loss parts averaged over updates, counts of what happened."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    updates: int = 0
    nonfinite_skips: int = 0
    weight_rollbacks: int = 0
    bad_streak: int = 0  # refused updates in a row at the end of this step (continuing the previous steps')
    refusal: str = ""  # why the last refused update was refused

    def as_metrics(self) -> dict[str, float]:
        names = {
            "grad_norm": "grad/norm",
            "update_ratio": "train/update_ratio",
        }  # ||Δθ||/||θ|| (weight_guard)
        out = {names.get(k, f"loss/{k}"): sum(v) / len(v) for k, v in self.values.items()}
        out["train/updates"] = float(self.updates)
        out["train/nonfinite_skips"] = float(self.nonfinite_skips)
        out["train/weight_rollbacks"] = float(self.weight_rollbacks)
        out["train/bad_updates_in_a_row"] = float(self.bad_streak)
        return out

    def refuse(self, optimizer: torch.optim.Optimizer, reason: str, *, by_guard: bool) -> None:
        """Count an update that was not applied (gradients dropped; nothing else was touched)."""
        optimizer.zero_grad(set_to_none=True)
        if by_guard:
            self.weight_rollbacks += 1
        else:
            self.nonfinite_skips += 1
        self.bad_streak += 1
        self.refusal = reason


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
    max_update_ratio: float = 10.0  # the weight guard's bound on ||Δθ||/||θ|| (0 = finiteness only)
    max_bad_updates: int = 0  # stop making updates after this many refused in a row (0 = never)


def run_updates(
    method: Method[R],
    method_cfg: MethodConfig,
    batch: StepBatch,
    prepared: Prepared[R],
    ctx: MethodContext,
    optim: Optim,
    settings: UpdateSettings,
    bad_streak: int = 0,
) -> UpdateStats:
    """All optimizer updates of one step; the EMA self-teacher follows each successful update (§4.6). The
    student's forward runs once per micro-batch (``micro_batch_loss``).

    ``bad_streak``: refused updates in a row before this step; the step makes no more updates once the
    streak reaches ``settings.max_bad_updates``.
    """
    optimizer = optim.optimizer
    stats = UpdateStats(bad_streak=bad_streak)
    scaler = settings.scaler or LossScaler("float32", "cpu")
    params = [p for p in ctx.student.parameters() if p.requires_grad]
    mini_batches = mini_batch_rows(batch, settings.mini_batches)
    if batch.old_logp_N_T is None and len(mini_batches) > 1:
        # updates after the first are off-policy: the current log-probs are no longer the old ones (§2.2)
        raise ValueError("several updates per step need the old log-probs (RolloutRequest.old_logprobs)")
    for rows in mini_batches:
        if 0 < settings.max_bad_updates <= stats.bad_streak:
            break
        optimizer.zero_grad(set_to_none=True)
        total = _backward(method, method_cfg, batch.select(rows), prepared.rows.select(rows), ctx, settings,
                          stats)  # fmt: skip
        finite = total is not None
        clip = settings.grad_clip if settings.grad_clip > 0 else math.inf
        if finite:
            scaler.unscale(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if finite else math.nan
        if not (finite and math.isfinite(grad_norm)):
            scaler.skip()
            stats.refuse(optimizer, "non-finite loss or gradient", by_guard=False)
            continue
        check = scaler.step(lambda: guarded_step(optimizer, settings.max_update_ratio))
        if not check.applied:  # nothing was changed: the scheduler and the EMA teacher stay too
            stats.refuse(optimizer, check.reason, by_guard=True)
            continue
        stats.bad_streak = 0
        optim.scheduler.step()
        if ctx.self_teacher is not None:
            ctx.self_teacher.update(ctx.student)
        stats.updates += 1
        stats.values["total"].append(total)
        stats.values["grad_norm"].append(grad_norm)
        stats.values["update_ratio"].append(check.ratio)
    optimizer.zero_grad(set_to_none=True)  # free the gradients before the next rollout needs the memory
    return stats


def _backward(
    method: Method[R], method_cfg: MethodConfig, mini: StepBatch, rows: R, ctx: MethodContext,
    settings: UpdateSettings, stats: UpdateStats,
) -> float | None:  # fmt: skip
    """Forward and backward of every micro-batch of ``mini`` (gradients accumulate); the summed loss, or None
    at the first non-finite micro-batch loss (its backward is not run)."""
    scaler = settings.scaler or LossScaler("float32", "cpu")
    device = next(ctx.student.parameters()).device
    denoms = method.denominators(method_cfg, mini, rows)
    total = 0.0
    size = micro_batch_size(mini, settings.micro_batch_size, settings.micro_batch_tokens)
    for micro in _micro_rows(mini.n, size):
        with autocast(settings.dtype, device):
            out = micro_batch_loss(method, method_cfg, mini.select(micro), rows.select(micro), denoms, ctx)
        if not torch.isfinite(out.loss):
            return None
        scaler.backward(out.loss)
        total += float(out.loss.detach())
        for k, v in out.metrics.items():
            stats.values[k].append(v)
    return total


def micro_batch_loss(
    method: Method[R], method_cfg: MethodConfig, micro: StepBatch, rows: R, denoms: dict[str, torch.Tensor],
    ctx: MethodContext,
) -> LossOutput:  # fmt: skip
    """The student's one forward on ``micro`` (on the run's path, ``ctx.forward``), then the method's loss."""
    out = ctx.forward.student(ctx.student, micro.sequences(), ctx.temperature)
    return method.loss(method_cfg, micro, rows, denoms, out, ctx)


def step_without_signal(
    student: torch.nn.Module, self_teacher: Any, optim: Optim, updates: int
) -> UpdateStats:
    """``updates`` optimizer steps on an all-zero gradient, each followed by the scheduler and EMA updates.

    AdamW on g = 0 (after k earlier steps): m ← β1·m, v ← β2·v, θ ← θ·(1 − lr·wd) − lr·m̂/(√v̂ + ε), so the
    weights move unless m = 0 and wd = 0. Gradients are set to zeros, not None: torch skips a None grad.
    """
    optimizer, scheduler = optim.optimizer, optim.scheduler
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
