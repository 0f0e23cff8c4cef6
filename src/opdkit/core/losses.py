"""Loss aggregation, the PPO-style clipped surrogate, importance weights and the methods' combined losses.

Aggregation (docs/algorithms.md §2.3), M the (N, T) loss mask and ℓ the per-token loss:

    token-mean                Σ M·ℓ / Σ M
    seq-mean-token-sum        (1/N_s) Σ_i Σ_t M·ℓ
    seq-mean-token-mean       (1/N_s) Σ_i [Σ_t M·ℓ / Σ_t M]
    seq-mean-token-sum-norm   Σ M·ℓ / (N · L_norm)           (Dr.GRPO; L_norm defaults to T)

N_s counts the sequences with at least one valid token, or every sequence with
``denominator="per_sequence_all"`` (the reference's effective behaviour, §11 A8). Every mode is a sum of
per-token terms over a denominator that depends only on the mask, so micro-batches aggregate exactly by
passing the whole batch's ``aggregation_denominator`` as ``denominator=``. An empty mask gives 0.

Clipped surrogate (§2.2): ratio = exp(clamp(logp − old, ±20));
l = max(−A·ratio, −A·clip(ratio, 1−ε_low, 1+ε_high)), then min(l, −A·c) where A < 0 (dual clip c = 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
DENOMINATORS = ("valid", "per_sequence_all")


@dataclass(frozen=True)
class LossOutput:
    """A scalar loss, the per-token loss it aggregates (N, T), and metrics (floats, caller-namespaced)."""

    loss: torch.Tensor
    per_token_N_T: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _check_mode(mode: str, denominator: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")
    if denominator not in DENOMINATORS:
        raise ValueError(f"unknown denominator {denominator!r}; valid: {', '.join(DENOMINATORS)}")
    if denominator != "valid" and mode not in ("seq-mean-token-sum", "seq-mean-token-mean"):
        raise ValueError(
            f"denominator {denominator!r} only applies to the seq-mean modes (it counts sequences), "
            f"not {mode!r}"
        )


def _valid_sequences(mask: torch.Tensor, norm_length: int | None) -> torch.Tensor:
    return (mask.sum(dim=-1) > 0).sum().to(torch.float32)


def _all_sequences(mask: torch.Tensor, norm_length: int | None) -> torch.Tensor:
    return torch.tensor(float(mask.shape[0]))


# mode -> denominator(mask, norm_length); the seq-mean modes also depend on ``denominator`` (§11 A8).
_TOKEN_DENOMINATORS = {
    "token-mean": lambda mask, norm_length: mask.sum(),
    "seq-mean-token-sum-norm": lambda mask, norm_length: torch.tensor(
        float(mask.shape[0] * (norm_length or mask.shape[-1]))
    ),
}
_SEQUENCE_DENOMINATORS = {"valid": _valid_sequences, "per_sequence_all": _all_sequences}


def aggregation_denominator(
    mask_N_T: torch.Tensor, mode: str, *, norm_length: int | None = None, denominator: str = "valid"
) -> torch.Tensor:
    """The denominator of ``aggregate`` for this mask (a 0-dim float32 tensor, at least 1)."""
    _check_mode(mode, denominator)
    count_fn = _TOKEN_DENOMINATORS.get(mode, _SEQUENCE_DENOMINATORS[denominator])
    return count_fn(mask_N_T.to(torch.float32), norm_length).clamp(min=1.0)


def _masked(loss_N_T: torch.Tensor, mask_N_T: torch.Tensor) -> torch.Tensor:
    """M·ℓ that is exactly 0 at masked positions even if ℓ is NaN or inf there."""
    return torch.where(mask_N_T.to(torch.bool), loss_N_T, torch.zeros_like(loss_N_T))


def aggregate(
    loss_N_T: torch.Tensor,
    mask_N_T: torch.Tensor,
    mode: str,
    *,
    norm_length: int | None = None,
    denominator: str = "valid",
    global_denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar with one of the four modes (module docstring) -> 0-dim tensor.

    ``global_denominator`` replaces the local one (from ``aggregation_denominator`` on the whole batch) so
    that summing the results of micro-batches equals aggregating the whole batch at once.
    """
    _check_mode(mode, denominator)
    masked_N_T = _masked(loss_N_T, mask_N_T)
    if mode == "seq-mean-token-mean":
        tokens_N = mask_N_T.to(loss_N_T.dtype).sum(dim=-1).clamp(min=1)
        numerator = (masked_N_T.sum(dim=-1) / tokens_N).sum()
    else:
        numerator = masked_N_T.sum()
    if global_denominator is None:
        global_denominator = aggregation_denominator(
            mask_N_T, mode, norm_length=norm_length, denominator=denominator
        )
    return numerator / global_denominator


def masked_mean(x_N_T: torch.Tensor, mask_N_T: torch.Tensor) -> torch.Tensor:
    """Mean of x over valid positions (0 for an empty mask) -> 0-dim tensor; for metrics."""
    return _masked(x_N_T, mask_N_T).sum() / mask_N_T.to(x_N_T.dtype).sum().clamp(min=1)


def truncated_is_weight(logp_num: torch.Tensor, logp_den: torch.Tensor, *, cap: float | None) -> torch.Tensor:
    """Detached importance weight min(exp(clamp(num − den, ±20)), cap); all ones when cap is None.

    §3.4 (SDPO's ``is_clip``: num = logp_θ, den = logp_old) and §2.6 (rollout IS: num = trainer's old
    log-prob, den = the sampler's). No lower clip.
    """
    if cap is None:
        return torch.ones_like(logp_num, dtype=torch.float32)
    ratio = torch.exp((logp_num - logp_den).detach().to(torch.float32).clamp(-20.0, 20.0))
    return ratio.clamp(max=cap)


@dataclass(frozen=True)
class Surrogate:
    """Per-token clipped surrogate and the masks of where clipping was active (all (N, T))."""

    loss_N_T: torch.Tensor
    ratio_N_T: torch.Tensor
    clipped_N_T: torch.Tensor
    dual_clipped_N_T: torch.Tensor


def clipped_surrogate(
    logp_N_T: torch.Tensor,
    old_logp_N_T: torch.Tensor,
    advantages_N_T: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
    mask_N_T: torch.Tensor | None = None,
) -> Surrogate:
    """PPO clipped surrogate per token with asymmetric clip and dual clip (§2.2). ``advantages`` may be (N,)
    (broadcast to every token) or (N, T). With ``mask_N_T``, masked positions get A = 0 and ratio 1 whatever
    they hold, so NaN/inf there reaches neither the loss nor the gradient (0·NaN is NaN in backward)."""
    adv = advantages_N_T if advantages_N_T.dim() == logp_N_T.dim() else advantages_N_T.unsqueeze(-1)
    adv = adv.detach().to(torch.float32).expand_as(logp_N_T)
    old = old_logp_N_T.detach()
    if mask_N_T is not None:
        keep = mask_N_T.to(torch.bool)
        adv = torch.where(keep, adv, torch.zeros_like(adv))
        old = torch.where(keep, old, logp_N_T.detach())
    ratio = torch.exp((logp_N_T - old).clamp(-20.0, 20.0))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    clipped_active = clipped > unclipped
    dual_active = torch.zeros_like(clipped_active)
    if dual_clip is not None:
        lower_bound = -adv * dual_clip
        dual_active = (adv < 0) & (loss > lower_bound)
        loss = torch.where(adv < 0, torch.minimum(loss, lower_bound), loss)
    return Surrogate(loss_N_T=loss, ratio_N_T=ratio, clipped_N_T=clipped_active, dual_clipped_N_T=dual_active)


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
    mode: str = "token-mean",
    global_denominator: torch.Tensor | None = None,
) -> LossOutput:
    """Aggregated PPO-style policy loss (§2.2, §2.3) with metrics ``clipfrac``, ``clipfrac_lower`` (dual
    clip), ``ratio_mean`` and ``approx_kl`` (mean of old − new log-prob) over the valid tokens.

    ``global_denominator``: the aggregation's denominator over the whole mini-batch when ``logp`` is one
    micro-batch of it (``aggregation_denominator``); None divides by this batch's own.
    """
    sur = clipped_surrogate(
        logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, mask_N_T=mask
    )
    return LossOutput(
        loss=aggregate(sur.loss_N_T, mask, mode, global_denominator=global_denominator),
        per_token_N_T=sur.loss_N_T,
        metrics=surrogate_metrics(sur, logp, old_logp, mask),
    )


def surrogate_metrics(
    sur: Surrogate, logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Clip fractions, mean ratio and approximate KL over the valid tokens (floats)."""
    with torch.no_grad():
        return {
            "clipfrac": float(masked_mean(sur.clipped_N_T.float(), mask)),
            "clipfrac_lower": float(masked_mean(sur.dual_clipped_N_T.float(), mask)),
            "ratio_mean": float(masked_mean(sur.ratio_N_T, mask)),
            "approx_kl": float(masked_mean(old_logp - logp, mask)),
        }


def mle_loss(
    logp_N_T: torch.Tensor, weights_N: torch.Tensor, mask_N_T: torch.Tensor, *, mode: str = "token-mean"
) -> LossOutput:
    """Weighted negative log-likelihood −w_i·logp_θ[i,t] aggregated over ``mask`` (SCOPE MLE path, §5.5)."""
    per_token = -weights_N.detach().to(logp_N_T.dtype).unsqueeze(-1) * logp_N_T
    return LossOutput(loss=aggregate(per_token, mask_N_T, mode), per_token_N_T=per_token)
