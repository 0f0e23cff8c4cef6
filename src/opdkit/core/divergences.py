"""Divergences between student and teacher distributions at each response position.

``token_divergence`` (§3.2) reduces the last dimension of two log-prob tensors (over V, or over
the K+1 top-k-plus-tail buckets of §3.3):

    alpha = 0        forward KL   KL(T‖S) = Σ e^t (t − s)
    alpha = 1        reverse KL   KL(S‖T) = Σ e^s (s − t)
    0 < alpha < 1    generalised JSD with mixture M = (1−α)·e^s + α·e^t:
                     D = (1−α)·KL(S‖M) + α·KL(T‖M)     (TRL GKD / SDPO convention; α = 0.5 is symmetric)

The endpoints are exact (the JSD formula tends to 0 as α → 0 or 1). Terms with zero probability contribute
exactly 0: log-probs are floored at −1e4, so −inf logits never make NaN. The per-logit gradient of the JSD
is that of a policy gradient with advantage −(1−α)(s_v − log M_v) (§3.2).

``topk_with_tail`` (§3.3): the student's top-k support, both distributions normalised over the full
vocabulary, plus a tail bucket log(1 − Σ_k p) (or renormalised over the K entries). ``teacher_support_logp``
is the server-teacher variant: the teacher's top-K ids, both renormalised on that support, no tail.
``kl_estimate`` holds the k1/k2/k3 estimators of §2.4 used as KL penalties.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

LOGP_FLOOR = -1e4  # §5.7: never −inf; any log-prob below this is 0 in float32 anyway


class PairLogp(NamedTuple):
    """Student and teacher log-probs over the same support (…, K) or (…, K+1)."""

    student: torch.Tensor
    teacher: torch.Tensor


def _floor(logp: torch.Tensor) -> torch.Tensor:
    return logp.clamp(min=LOGP_FLOOR)


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) = Σ e^p (p − q) over the last dim, with 0·(anything) = 0.

    Clamped at 0: the true value is never negative, so this only removes rounding error (at P = Q the
    gradient is 0 as well)."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(dim=-1).clamp(min=0.0)


def token_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """Divergence over the last dim between log-prob tensors of equal shape (…, C) -> (…) float32.

    See the module docstring for the three regimes. Both inputs must be normalised log-probs.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = _floor(student_logp.to(torch.float32))
    t = _floor(teacher_logp.to(torch.float32))
    if alpha == 0.0:
        return _kl(t, s)
    if alpha == 1.0:
        return _kl(s, t)
    log_m = torch.logaddexp(s + math.log(1 - alpha), t + math.log(alpha))
    return (1 - alpha) * _kl(s, log_m) + alpha * _kl(t, log_m)


def _tail_logp(topk_logp: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ_k e^x) computed as log(−expm1(min(logsumexp_k x, −1e-7))) (§3.3 step 4) -> (…, 1)."""
    lse = torch.logsumexp(topk_logp, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.log(-torch.expm1(lse))


def _with_tail_or_renorm(topk_logp: torch.Tensor, tail: bool) -> torch.Tensor:
    if tail:
        return torch.cat([topk_logp, _tail_logp(topk_logp)], dim=-1)
    return topk_logp - torch.logsumexp(topk_logp, dim=-1, keepdim=True)


def topk_with_tail(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, k: int, tail: bool = True
) -> PairLogp:
    """Student and teacher log-probs on the student's top-k support (§3.3) -> two (…, K+1) or (…, K).

    ``student_logits`` (…, V) carry the gradient; the indices do not. ``teacher_logits`` (…, V) are detached
    here (the teacher never receives gradient). Both are normalised over the full vocabulary before gathering;
    ``tail=True`` appends the bucket log(1 − Σ_k p), otherwise both are renormalised over the K entries.
    Divide logits by the sampling temperature before calling.
    """
    k = min(k, student_logits.shape[-1])
    teacher_logits = teacher_logits.detach()
    idx = student_logits.detach().topk(k, dim=-1).indices
    s_k = student_logits.gather(-1, idx) - torch.logsumexp(student_logits, dim=-1, keepdim=True)
    t_k = teacher_logits.gather(-1, idx) - torch.logsumexp(teacher_logits, dim=-1, keepdim=True)
    return PairLogp(_with_tail_or_renorm(s_k, tail), _with_tail_or_renorm(t_k, tail))


def teacher_support_logp(
    student_logits: torch.Tensor, teacher_topk_ids: torch.Tensor, teacher_topk_logp: torch.Tensor
) -> PairLogp:
    """Server-teacher variant of §3.3: the teacher's top-K ids (…, K), both renormalised on them, no tail.

    ``teacher_topk_logp`` are the teacher's log-probs of those ids as returned by the server.
    """
    s_k = student_logits.gather(-1, teacher_topk_ids)
    t_k = teacher_topk_logp.detach().to(s_k.dtype)
    return PairLogp(_with_tail_or_renorm(s_k, False), _with_tail_or_renorm(t_k, False))


def distillation_token_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    alpha: float = 0.5,
    top_k: int | None = 100,
    tail: bool = True,
) -> torch.Tensor:
    """Per-position distillation loss (§4.7): divergence on the top-k (+tail) support, or the full vocabulary
    when ``top_k`` is None -> (…) float32. Logits (…, V) already divided by the temperature."""
    if top_k is None:
        s = torch.log_softmax(student_logits.to(torch.float32), dim=-1)
        t = torch.log_softmax(teacher_logits.detach().to(torch.float32), dim=-1)
        return token_divergence(s, t, alpha=alpha)
    pair = topk_with_tail(
        student_logits.to(torch.float32), teacher_logits.to(torch.float32), k=top_k, tail=tail
    )
    return token_divergence(pair.student, pair.teacher, alpha=alpha)


def sampled_token_distill_loss(logp_N_T: torch.Tensor, teacher_logp_N_T: torch.Tensor) -> torch.Tensor:
    """ℓ_t = sg(logp_θ − logp_T)·logp_θ (§3.1): its gradient is the per-token REINFORCE estimate of
    ∇KL(π_θ‖π_T). Only valid for the reverse KL (α = 1). -> (N, T)."""
    return (logp_N_T - teacher_logp_N_T).detach() * logp_N_T


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ_v q log q of softmax(logits) over the last dim -> (…) float32 (SRPO's teacher entropy, §7.4)."""
    logp = torch.log_softmax(logits.to(torch.float32), dim=-1)
    return -(logp.exp() * _floor(logp)).sum(dim=-1)


def _k3(d: torch.Tensor) -> torch.Tensor:
    neg_d = (-d).clamp(-20.0, 20.0)  # verl clamps the log-ratio before exponentiating
    return (neg_d.exp() - neg_d - 1).clamp(-10.0, 10.0)


_KL_ESTIMATORS = {
    "k1": lambda d: d,
    "k2": lambda d: 0.5 * d.square(),
    "k3": _k3,
}
_KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimators of §2.4 with d = logp − ref_logp (elementwise):

    k1 ("kl") = d; k2 ("mse") = ½d²; k3 ("low_var_kl") = e^{−d} + d − 1 with −d clamped to [−20, 20] and the
    result to [−10, 10]; a "+" suffix (``k1+``, ``k3+``) keeps the forward value but takes k2's gradient.
    """
    straight_through = kind.endswith("+")
    base = kind.removesuffix("+")
    base = _KL_ALIASES.get(base, base)
    if base not in _KL_ESTIMATORS:
        valid = sorted([*_KL_ESTIMATORS, *_KL_ALIASES])
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(valid)} (each with optional '+')")
    d = logp - ref_logp
    value = _KL_ESTIMATORS[base](d)
    if straight_through:
        k2 = 0.5 * d.square()
        return k2 - k2.detach() + value.detach()
    return value
