"""Distillation divergences with their analytic gradient w.r.t. the student logits, one chunk at a time.

``opdkit.core.chunked`` calls these on a chunk of R positions so that the (N, T, V) logits never exist at
once. Each function returns the per-row divergence D (R,) of ``distillation_token_loss`` (docs/algorithms.md
§3.2, §3.3) and, when asked, dD/dz (R, V) for the student logits z (already divided by the temperature):
exactly what autograd gives for the reference, including its floors (log-probs clamped at ``LOGP_FLOOR``)
and clamps (each KL clamped at 0, the top-k mass clamped at −1e-7 before the tail bucket).

Derivation. Write the divergence over C categories (V, or the K+1 buckets) as a function of the student's
log-probs S with the entries treated as independent inputs, as the reference's autograd graph does, and
G = ∂D/∂S (``bucket_divergence``):

    α = 0   D = Σ e^T (T − S)                    G = −e^T
    α = 1   D = Σ e^S (S − T)                    G = e^S (S − T + 1)
    JSD     log M = logaddexp(S + log(1−α), T + log α), r = e^{S − log M}
            A = Σ e^S (S − log M), B = Σ e^T (T − log M), D = (1−α)A + αB
            G = (1−α)·e^S (S − log M + 1 − (1−α) r) − α(1−α)·e^T r
            which simplifies to (1−α)·e^S (S − log M) when neither KL is clamped (the "+1" terms cancel
            because (1−α)e^S + αe^T = M); a clamped KL (value < 0) contributes no gradient.

Then the chain rule to the logits z with s = z − logsumexp(z), p = e^s:

    full vocabulary   S = s                       dD/dz = G − p·ΣG
    top-k + tail      S = [s[idx], log(1 − Σ_k e^{s_k})]:  G'_k = G_k − G_tail·e^{s_k − S_tail}
                      (0 when the top-k mass reaches 1 − 1e-7), dD/dz = scatter(idx, G') − p·ΣG'
    top-k renorm      S = s[idx] − logsumexp(s[idx]): G'_k = G_k − e^{S_k}·ΣG, same scatter
    teacher support   the teacher's ids (server variant), renormalised: as top-k renorm, and the p term
                      vanishes exactly because the support log-probs do not depend on logsumexp(z).

Every path works on a block of rows at a time and writes dD/dz over one of its two inputs, so a chunk never
holds more than its student and teacher log-probs as (R, V) tensors plus block-sized temporaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from opdkit.core.divergences import LOGP_FLOOR

TAIL_MASS_CLAMP = -1e-7  # §3.3 step 4: log of the top-k mass is clamped here before log(1 − e^x)


@dataclass(frozen=True)
class DivergenceSpec:
    """Which divergence (§3.2) on which support (§3.3).

    alpha: 0 forward KL, 1 reverse KL, in between generalised JSD (SDPO default 0.5).
    top_k: size of the student's top-k support; None for the full vocabulary.
    tail: with top-k, append the tail bucket (True, SDPO default) or renormalise over the K entries.
    """

    alpha: float = 0.5
    top_k: int | None = 100
    tail: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"DivergenceSpec.alpha must be in [0, 1], got {self.alpha}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"DivergenceSpec.top_k must be >= 1 or None, got {self.top_k}")


@dataclass(frozen=True)
class ChunkDivergence:
    """Per-row divergence (R,) and its gradient dD/dz (R, V) for the chunk's student logits (or None)."""

    value_R: torch.Tensor
    grad_R_V: torch.Tensor | None


# Elements per elementwise temporary: two rows at V = 152k (1.2 MB, cache-sized) instead of a whole (R, V)
# buffer. A small vocabulary gets as many rows per block as fit, so a tiny model does not pay one Python-level
# loop iteration per two tokens.
BLOCK_ELEMENTS = 2 * 152_064


def row_blocks(n_rows: int, width: int) -> list[slice]:
    """Row slices of at least 2 rows and at most ~``BLOCK_ELEMENTS`` elements (``width`` per row)."""
    step = max(2, BLOCK_ELEMENTS // max(1, width))
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def rowdot(a_R_C: torch.Tensor, b_R_C: torch.Tensor) -> torch.Tensor:
    """Σ_c a·b per row -> (R,), a block of rows at a time (a batched matrix product needs no temporary
    either, but is about 3× slower on CPU)."""
    out = a_R_C.new_empty(a_R_C.shape[0])
    for rows in row_blocks(*a_R_C.shape):
        torch.sum(a_R_C[rows] * b_R_C[rows], dim=-1, out=out[rows])
    return out


def entropy_rows(logp_R_C: torch.Tensor) -> torch.Tensor:
    """−Σ e^s·max(s, floor) per row, as ``entropy_from_logits``, with block-sized temporaries only."""
    out = logp_R_C.new_empty(logp_R_C.shape[0])
    for rows in row_blocks(*logp_R_C.shape):
        block = logp_R_C[rows]
        torch.sum(block.exp() * block.clamp(min=LOGP_FLOOR), dim=-1, out=out[rows])
    return out.neg_()


def log_softmax_(z_R_C: torch.Tensor) -> torch.Tensor:
    """z − logsumexp(z) in place, a block of rows at a time (logsumexp's temporaries stay block-sized)."""
    for rows in row_blocks(*z_R_C.shape):
        block = z_R_C[rows]
        block.sub_(torch.logsumexp(block, dim=-1, keepdim=True))
    return z_R_C


def bucket_divergence(s_R_C: torch.Tensor, t_R_C: torch.Tensor, alpha: float) -> ChunkDivergence:
    """D and G = ∂D/∂S over the last dim for small supports (K+1 buckets, or a few rows); allocates freely.

    Same floors and clamps as ``token_divergence``; see the module docstring for the formulas.
    """
    keep = s_R_C >= LOGP_FLOOR  # clamp(min=floor) passes gradient only at or above the floor
    s = s_R_C.clamp(min=LOGP_FLOOR)
    t = t_R_C.clamp(min=LOGP_FLOOR)
    if alpha == 0.0:
        q = t.exp()
        raw = rowdot(q, t - s)
        grad = -q * (raw >= 0).unsqueeze(1)
        return ChunkDivergence(raw.clamp(min=0.0), grad * keep)
    p = s.exp()
    if alpha == 1.0:
        raw = rowdot(p, s - t)
        grad = p * (s - t + 1) * (raw >= 0).unsqueeze(1)
        return ChunkDivergence(raw.clamp(min=0.0), grad * keep)
    log_m = torch.logaddexp(s + math.log(1 - alpha), t + math.log(alpha))
    q = t.exp()
    u = s - log_m
    r = u.exp()
    a_raw = rowdot(p, u)
    b_raw = rowdot(q, t - log_m)
    grad_a = p * (u + 1 - (1 - alpha) * r)
    grad_b = -(1 - alpha) * q * r
    grad = (1 - alpha) * (a_raw >= 0).unsqueeze(1) * grad_a + alpha * (b_raw >= 0).unsqueeze(1) * grad_b
    value = (1 - alpha) * a_raw.clamp(min=0.0) + alpha * b_raw.clamp(min=0.0)
    return ChunkDivergence(value, grad * keep)


def _project_softmax(grad_R_V: torch.Tensor, p_R_V: torch.Tensor) -> torch.Tensor:
    """G − p·ΣG in place: the chain rule through s = z − logsumexp(z)."""
    return grad_R_V.addcmul_(p_R_V, grad_R_V.sum(dim=-1, keepdim=True), value=-1.0)


def _jsd_block(s: torch.Tensor, t: torch.Tensor, alpha: float) -> ChunkDivergence:
    """JSD_α and G for a few rows of floored log-probs, in the short form G = (1−α)·e^S·(S − log M).

    log M = log((1−α)e^S + αe^T), floored at the smallest normal float: only entries where both
    probabilities underflow are affected, and those contribute 0 to D and G either way. Rows where a KL was
    clamped at 0 (near-identical distributions) take the exact general form of ``bucket_divergence``."""
    p, q = s.exp(), t.exp()
    log_m = torch.add(p, q, alpha=alpha / (1 - alpha)).mul_(1 - alpha)
    log_m.clamp_(min=torch.finfo(s.dtype).tiny).log_()
    u = s - log_m
    a_raw = (p * u).sum(dim=-1)
    b_raw = (q * (t - log_m)).sum(dim=-1)
    value = (1 - alpha) * a_raw.clamp(min=0.0) + alpha * b_raw.clamp(min=0.0)
    grad = u.mul_(p).mul_(1 - alpha)
    clamped = ((a_raw < 0) | (b_raw < 0)).nonzero().reshape(-1)
    if clamped.numel():
        grad[clamped] = bucket_divergence(s[clamped], t[clamped], alpha).grad_R_V
    return ChunkDivergence(value, grad)


def full_vocab_divergence(
    s_R_V: torch.Tensor, t_R_V: torch.Tensor, alpha: float, *, need_grad: bool
) -> ChunkDivergence:
    """Full-vocabulary divergence (§3.2) of full log-softmaxes, a block of rows at a time.

    ``s_R_V``/``t_R_V``: student/teacher log-probs (R, V), normalised over V; both are floored in place and
    dD/dz is written over ``t_R_V`` (returned as ``grad_R_V``), so no other (R, V) buffer is needed.
    """
    value = s_R_V.new_empty(s_R_V.shape[0])
    for rows in row_blocks(*s_R_V.shape):
        s, t = s_R_V[rows], t_R_V[rows]
        keep = (s >= LOGP_FLOOR) if bool((s < LOGP_FLOOR).any()) else None
        s.clamp_(min=LOGP_FLOOR)
        t.clamp_(min=LOGP_FLOOR)
        out = _jsd_block(s, t, alpha) if 0.0 < alpha < 1.0 else bucket_divergence(s, t, alpha)
        value[rows] = out.value_R
        if need_grad:
            grad = out.grad_R_V if keep is None else out.grad_R_V * keep
            t.copy_(_project_softmax(grad, s.exp()))
    return ChunkDivergence(value, t_R_V if need_grad else None)


def _tail_bucket(logp_R_K: torch.Tensor) -> torch.Tensor:
    lse = torch.logsumexp(logp_R_K, dim=-1, keepdim=True).clamp(max=TAIL_MASS_CLAMP)
    return torch.log(-torch.expm1(lse))


def topk_divergence(
    s_R_V: torch.Tensor, t_R_V: torch.Tensor, idx_R_K: torch.Tensor, spec: DivergenceSpec, *, need_grad: bool
) -> ChunkDivergence:
    """Divergence on the student's top-k support (§3.3), with tail bucket or renormalised; overwrites s_R_V.

    ``idx_R_K``: the student's top-k indices (from the logits, before normalisation, as the reference).
    """
    s_k = s_R_V.gather(-1, idx_R_K)
    t_k = t_R_V.gather(-1, idx_R_K)
    if spec.tail:
        s_b = torch.cat([s_k, _tail_bucket(s_k)], dim=-1)
        t_b = torch.cat([t_k, _tail_bucket(t_k)], dim=-1)
    else:
        s_b = s_k - torch.logsumexp(s_k, dim=-1, keepdim=True)
        t_b = t_k - torch.logsumexp(t_k, dim=-1, keepdim=True)
    out = bucket_divergence(s_b, t_b, spec.alpha)
    if not need_grad:
        return ChunkDivergence(out.value_R, None)
    grad_b = out.grad_R_V
    if spec.tail:
        mass_ok = torch.logsumexp(s_k, dim=-1, keepdim=True) <= TAIL_MASS_CLAMP
        grad_k = grad_b[:, :-1] - grad_b[:, -1:] * torch.exp(s_k - s_b[:, -1:]) * mass_ok
    else:
        grad_k = grad_b - s_b.exp() * grad_b.sum(dim=-1, keepdim=True)
    grad = torch.exp(s_R_V, out=s_R_V).mul_(-grad_k.sum(dim=-1, keepdim=True))
    return ChunkDivergence(out.value_R, grad.scatter_add_(-1, idx_R_K, grad_k))


def support_divergence(
    s_R_V: torch.Tensor,
    ids_R_K: torch.Tensor,
    teacher_logp_R_K: torch.Tensor,
    alpha: float,
    *,
    need_grad: bool,
) -> ChunkDivergence:
    """Server-teacher variant of §3.3: the teacher's ids, both renormalised on them, no tail; overwrites s.

    ``teacher_logp_R_K``: the teacher's log-probs of those ids as returned by the server.
    """
    s_k = s_R_V.gather(-1, ids_R_K)
    s_b = s_k - torch.logsumexp(s_k, dim=-1, keepdim=True)
    t_k = teacher_logp_R_K.to(s_b.dtype)
    t_b = t_k - torch.logsumexp(t_k, dim=-1, keepdim=True)
    out = bucket_divergence(s_b, t_b, alpha)
    if not need_grad:
        return ChunkDivergence(out.value_R, None)
    grad_k = out.grad_R_V - s_b.exp() * out.grad_R_V.sum(dim=-1, keepdim=True)
    grad = s_R_V.zero_().scatter_add_(-1, ids_R_K, grad_k)  # s is no longer needed: reuse its buffer
    return ChunkDivergence(out.value_R, grad)
