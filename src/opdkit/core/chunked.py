"""Chunked distillation loss from hidden states: the (N, T, V) logits never exist at once.

What it computes (§3.2-§3.4, §4.7, §6.2, §7.4): for every response position of the loss mask,
student logits z_S = (h_S·Wᵀ + b)/T and teacher logits z_T (from the teacher's hidden states and head, or
the teacher's top-K log-probs from a server), the divergence D (full vocabulary, or the student's top-k
support with a tail bucket or renormalised; α = 0 forward KL, 1 reverse KL, else JSD_α), optionally the
sampled-token log-probs logp_θ and the teacher's (SRPO) and student's entropies, and the aggregated loss

    loss = agg( w[i,t] · IS[i,t] · E[i,t] · D[i,t], loss_mask )          (§4.7; agg is ``losses.aggregate``)

with w the caller's detached per-token weight (question weight of SC-SDPO/PACED × rollout IS of §2.6),
IS = min(exp(logp_θ − logp_old), is_clip) (§3.4) and E the SRPO entropy weight exp(−βH_T)/mean (§7.4).
It equals ``distillation_token_loss`` on the full logits followed by ``self_distillation_loss`` in value and
gradient (tests/core/test_chunked.py).

How. The positions to compute are gathered into R rows (loss rows first, then rows that only need log-probs)
and processed ``chunk_tokens`` rows at a time inside one ``torch.autograd.Function``. In the forward pass
each chunk's gradient dD/dz is written analytically (``divergence_grads``) and multiplied into the two
gradient buffers right away: grad_h[rows] = dz·W and grad_W += dzᵀ·h. Nothing V-sized outlives a chunk, and
the backward pass only scales those buffers by the incoming scalar gradient. Peak extra memory is grad_W
(the parameter gradient every implementation holds) plus two (chunk, V) float32 buffers (student and teacher
log-probs; dD/dz is written over one of them) and row-block temporaries. The sampled-token log-probs are
returned with a gradient too (for the GRPO branch of SRPO, or a PG term); their gradient is recomputed per
chunk in the backward pass, and only when it is used.

Example (SDPO step, §4.7)::

    out = chunked_distillation_loss(
        StudentInputs(hidden_N_T_H, LinearHead(model.get_output_embeddings().weight), token_ids_N_T=ids),
        TeacherHidden(teacher_hidden_N_T_H, LinearHead(teacher.get_output_embeddings().weight)),
        LossWeighting(loss_mask_N_T, weight_N_T=question_weight_N, old_logp_N_T=old_logp, is_clip=2.0),
        ChunkSettings(temperature=1.0, divergence=DivergenceSpec(alpha=0.5, top_k=100, tail=True)),
    )
    out.loss.backward()

``chunked_token_logp`` is the same machinery without a teacher: sampled-token log-probs (differentiable) and
entropies, e.g. for the GRPO loss, old/reference log-probs or the teacher's entropy in a no-grad pre-pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.core.chunked_function import ChunkPlan, LossRows, run_chunked
from opdkit.core.divergence_grads import DivergenceSpec
from opdkit.core.losses import LossOutput, aggregate, masked_mean
from opdkit.core.objectives import DistillAggregation

__all__ = [
    "ChunkSettings",
    "ChunkedDistillation",
    "DivergenceSpec",
    "LinearHead",
    "LossWeighting",
    "StudentInputs",
    "TeacherHidden",
    "TeacherTopK",
    "TokenLogp",
    "chunked_distillation_loss",
    "chunked_token_logp",
    "lerp_teacher_hidden",
]


@dataclass(frozen=True)
class LinearHead:
    """An output projection: logits = hidden·weightᵀ + bias (e.g. ``model.get_output_embeddings()``)."""

    weight_V_H: torch.Tensor
    bias_V: torch.Tensor | None = None


@dataclass(frozen=True)
class StudentInputs:
    """The student's side of the loss.

    hidden_N_T_H: final hidden states (after the last norm) at the positions that predict the response tokens
        (§0 logit alignment), with gradient.
    head: the student's output projection, with gradient (or frozen).
    token_ids_N_T: sampled response ids; their log-probs are returned (needed for ``is_clip``).
    token_mask_N_T: positions whose log-probs/entropy are computed besides the loss mask (e.g. the response
        mask when the loss mask is response mask × sd_mask); default: the loss mask only.
    """

    hidden_N_T_H: torch.Tensor
    head: LinearHead
    token_ids_N_T: torch.Tensor | None = None
    token_mask_N_T: torch.Tensor | None = None


@dataclass(frozen=True)
class TeacherHidden:
    """The teacher's final hidden states aligned to the student's response positions (N, T, H_T) and its head.

    Used under no-grad. For SDPO the teacher's prompt differs, so align with the teacher's own prompt length.
    """

    hidden_N_T_H: torch.Tensor
    head: LinearHead


@dataclass(frozen=True)
class TeacherTopK:
    """A server teacher's top-K ids (N, T, K) and their log-probs: the support of §3.3's remote variant."""

    ids_N_T_K: torch.Tensor
    logp_N_T_K: torch.Tensor


@dataclass(frozen=True)
class LossWeighting:
    """Mask, weights and aggregation of the per-token divergence (§2.3, §3.4, §4.7, §7.4).

    loss_mask_N_T: tokens in the loss (response mask × sd_mask or routing).
    weight_N_T: detached multiplier, (N,) per sequence or (N, T) per token (question weight × rollout IS).
    old_logp_N_T, is_clip: IS = min(exp(clamp(logp_θ − old, ±20)), is_clip), detached (§3.4); both or neither.
    entropy_beta: SRPO's β: weight exp(−β H_T) normalised to mean 1 over the loss tokens (§7.4).
    entropy_mean: the normaliser mean(exp(−β H_T)) over the whole batch when this call is a micro-batch.
    aggregation, global_denominator: as ``self_distillation_loss``.
    """

    loss_mask_N_T: torch.Tensor
    weight_N_T: torch.Tensor | None = None
    old_logp_N_T: torch.Tensor | None = None
    is_clip: float | None = None
    entropy_beta: float | None = None
    entropy_mean: float | torch.Tensor | None = None
    aggregation: DistillAggregation = field(default_factory=DistillAggregation)
    global_denominator: torch.Tensor | None = None


# ≈ 165 tokens at V = 152k: 96 MiB per float32 (chunk, V) buffer, two of them. Larger chunks make the four
# matrix products per chunk faster on CPU (about 120 GFLOP/s at 110 rows, 150 at 200, 160 at 512, one thread).
DEFAULT_CHUNK_ELEMENTS = 24 << 20


@dataclass(frozen=True)
class ChunkSettings:
    """temperature: logits are divided by it (§0). divergence: §3.2/§3.3 choice. chunk_tokens: rows per chunk
    (default: max_chunk_elements // V). student_entropy/teacher_entropy: also return H (metrics, SRPO)."""

    temperature: float = 1.0
    divergence: DivergenceSpec = field(default_factory=DivergenceSpec)
    chunk_tokens: int | None = None
    max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    student_entropy: bool = False
    teacher_entropy: bool = False


@dataclass(frozen=True)
class ChunkedDistillation:
    """Result of ``chunked_distillation_loss``; every (N, T) tensor is 0 outside the positions computed.

    loss: 0-dim float32, differentiable w.r.t. the student's hidden states and head.
    logp_N_T: sampled-token log-probs, differentiable (None without token ids).
    divergence_N_T: D (detached); per_token_N_T: w·IS·E·D (detached), the aggregated quantity.
    is_weight_N_T, teacher_entropy_N_T, student_entropy_N_T, entropy_weight_N_T: when requested.
    metrics: floats over the loss tokens (divergence_mean, is_weight_mean, is_clipfrac,
        teacher_entropy_mean, …).
    """

    loss: torch.Tensor
    logp_N_T: torch.Tensor | None
    divergence_N_T: torch.Tensor
    per_token_N_T: torch.Tensor
    is_weight_N_T: torch.Tensor | None = None
    teacher_entropy_N_T: torch.Tensor | None = None
    student_entropy_N_T: torch.Tensor | None = None
    entropy_weight_N_T: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def as_loss_output(self) -> LossOutput:
        """The same loss as ``self_distillation_loss`` returns it."""
        return LossOutput(loss=self.loss, per_token_N_T=self.per_token_N_T, metrics=dict(self.metrics))


@dataclass(frozen=True)
class TokenLogp:
    """Sampled-token log-probs (N, T) (differentiable when the inputs are) and entropy (N, T) or None."""

    logp_N_T: torch.Tensor
    entropy_N_T: torch.Tensor | None = None


def _check_inputs(
    student: StudentInputs, teacher: TeacherHidden | TeacherTopK | None, mask: torch.Tensor
) -> None:
    hidden, weight = student.hidden_N_T_H, student.head.weight_V_H
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"StudentInputs: hidden_N_T_H {tuple(hidden.shape)} and head.weight_V_H {tuple(weight.shape)} "
            "must be (N, T, H) and (V, H)"
        )
    named = {
        "loss_mask_N_T": mask,
        "token_ids_N_T": student.token_ids_N_T,
        "token_mask_N_T": student.token_mask_N_T,
    }
    if isinstance(teacher, TeacherHidden):
        named["teacher.hidden_N_T_H[..., 0]"] = teacher.hidden_N_T_H[..., 0]
        t_weight = teacher.head.weight_V_H
        if teacher.hidden_N_T_H.shape[-1] != t_weight.shape[1] or t_weight.shape[0] != weight.shape[0]:
            raise ValueError(
                f"TeacherHidden: hidden {tuple(teacher.hidden_N_T_H.shape)} and head {tuple(t_weight.shape)} "
                f"must be (N, T, H_T) and (V, H_T) with the student's V = {weight.shape[0]}"
            )
    elif isinstance(teacher, TeacherTopK):
        named["teacher.ids_N_T_K[..., 0]"] = teacher.ids_N_T_K[..., 0]
        if teacher.ids_N_T_K.shape != teacher.logp_N_T_K.shape:
            raise ValueError("TeacherTopK: ids_N_T_K and logp_N_T_K must have the same shape (N, T, K)")
    for name, tensor in named.items():
        if tensor is not None and tuple(tensor.shape) != tuple(hidden.shape[:2]):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected (N, T) = {tuple(hidden.shape[:2])}"
            )


def _chunk_tokens(settings: ChunkSettings, vocab: int) -> int:
    if settings.chunk_tokens is not None:
        if settings.chunk_tokens < 1:
            raise ValueError(f"ChunkSettings.chunk_tokens must be >= 1, got {settings.chunk_tokens}")
        return settings.chunk_tokens
    return max(1, settings.max_chunk_elements // vocab)


def _caller_weight(weighting: LossWeighting) -> torch.Tensor | None:
    if weighting.weight_N_T is None:
        return None
    weight = weighting.weight_N_T.detach().to(torch.float32)
    return weight.unsqueeze(-1).expand(weighting.loss_mask_N_T.shape) if weight.dim() == 1 else weight


def _aggregation_coefficients(weighting: LossWeighting) -> torch.Tensor:
    """c[i,t] with aggregate(ℓ, mask, …) = Σ c·ℓ: every mode is linear in ℓ, so c is its gradient at ℓ = 0."""
    mask = weighting.loss_mask_N_T
    with torch.enable_grad():
        probe = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device, requires_grad=True)
        agg = aggregate(
            probe, mask, weighting.aggregation.mode,
            denominator=weighting.aggregation.denominator, global_denominator=weighting.global_denominator,
        )  # fmt: skip
        (coef,) = torch.autograd.grad(agg, probe)
    weight = _caller_weight(weighting)
    return coef if weight is None else coef * weight


def _validate_weighting(weighting: LossWeighting, student: StudentInputs, teacher: object) -> None:
    if (weighting.is_clip is None) != (weighting.old_logp_N_T is None):
        raise ValueError("LossWeighting: is_clip and old_logp_N_T must be given together (or neither)")
    if weighting.is_clip is not None and student.token_ids_N_T is None:
        raise ValueError("LossWeighting.is_clip needs StudentInputs.token_ids_N_T (the IS ratio uses logp_θ)")
    if weighting.entropy_beta is not None and not isinstance(teacher, TeacherHidden):
        raise ValueError(
            "LossWeighting.entropy_beta needs TeacherHidden: the entropy is over the full vocabulary"
        )


def _row_order(loss_mask: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Flat positions to compute (loss rows first, then rows only in ``token_mask``) and the loss count."""
    in_loss = loss_mask.reshape(-1).to(torch.bool)
    loss_rows = in_loss.nonzero().reshape(-1)
    if token_mask is None:
        return loss_rows, loss_rows.numel()
    extra = (token_mask.reshape(-1).to(torch.bool) & ~in_loss).nonzero().reshape(-1)
    return torch.cat([loss_rows, extra]), loss_rows.numel()


def _take_rows(x_N_T_H: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(R, H) rows of the flattened (N·T, H) tensor; a view, not a copy, when the rows are all of them."""
    flat = x_N_T_H.reshape(-1, x_N_T_H.shape[-1])
    if rows.numel() == flat.shape[0] and bool((rows == torch.arange(rows.numel(), device=rows.device)).all()):
        return flat
    return flat.index_select(0, rows)


def _teacher_rows(teacher: TeacherHidden | TeacherTopK, loss_rows: torch.Tensor) -> LossRows:
    if isinstance(teacher, TeacherHidden):
        return LossRows(
            teacher_hidden_R_H=_take_rows(teacher.hidden_N_T_H.detach(), loss_rows),
            teacher_weight_V_H=teacher.head.weight_V_H.detach(),
            teacher_bias_V=None if teacher.head.bias_V is None else teacher.head.bias_V.detach(),
        )
    k = teacher.ids_N_T_K.shape[-1]
    return LossRows(
        support_ids_R_K=teacher.ids_N_T_K.reshape(-1, k).index_select(0, loss_rows).to(torch.long),
        support_logp_R_K=teacher.logp_N_T_K.detach().reshape(-1, k).index_select(0, loss_rows),
    )


def _scatter(values_R: torch.Tensor | None, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """(R,) values at flat positions ``rows`` -> (N, T), zeros elsewhere (differentiable)."""
    if values_R is None:
        return None
    out = torch.zeros(shape.numel(), dtype=values_R.dtype, device=values_R.device)
    return out.index_put((rows[: values_R.numel()],), values_R).reshape(shape)


def chunked_distillation_loss(
    student: StudentInputs,
    teacher: TeacherHidden | TeacherTopK,
    weighting: LossWeighting,
    settings: ChunkSettings = ChunkSettings(),
) -> ChunkedDistillation:
    """The weighted, aggregated distillation loss of §4.7 from hidden states, chunk by chunk (see the module
    docstring)."""
    _check_inputs(student, teacher, weighting.loss_mask_N_T)
    _validate_weighting(weighting, student, teacher)
    if settings.temperature <= 0:
        raise ValueError(f"ChunkSettings.temperature must be > 0, got {settings.temperature}")
    shape = weighting.loss_mask_N_T.shape
    rows, n_loss = _row_order(weighting.loss_mask_N_T, student.token_mask_N_T)
    loss_rows = rows[:n_loss]
    coef_R = _aggregation_coefficients(weighting).reshape(-1).index_select(0, loss_rows)
    weight = _caller_weight(weighting)
    weight_R = None if weight is None else weight.reshape(-1).index_select(0, loss_rows)
    teacher_rows = _teacher_rows(teacher, loss_rows)
    old_R = None if weighting.old_logp_N_T is None else weighting.old_logp_N_T.detach().reshape(-1)[loss_rows]
    plan = ChunkPlan(
        n_loss=n_loss, chunk_tokens=_chunk_tokens(settings, student.head.weight_V_H.shape[0]),
        temperature=settings.temperature, divergence=settings.divergence, loss=teacher_rows, coef_R=coef_R,
        weight_R=weight_R,
        ids_R=None if student.token_ids_N_T is None else student.token_ids_N_T.reshape(-1)[rows].long(),
        old_logp_R=old_R, is_clip=weighting.is_clip, entropy_beta=weighting.entropy_beta,
        entropy_mean=weighting.entropy_mean, student_entropy=settings.student_entropy,
        teacher_entropy=settings.teacher_entropy or weighting.entropy_beta is not None,
    )  # fmt: skip
    out = run_chunked(
        _take_rows(student.hidden_N_T_H, rows), student.head.weight_V_H, student.head.bias_V, plan
    )
    return _package(out, rows, shape, weighting)


def _package(out, rows: torch.Tensor, shape: torch.Size, weighting: LossWeighting) -> ChunkedDistillation:
    per_token = _scatter(out.per_token_R, rows, shape)
    divergence = _scatter(out.divergence_R, rows, shape)
    result = dict(
        loss=out.loss, logp_N_T=_scatter(out.logp_R, rows, shape), divergence_N_T=divergence,
        per_token_N_T=per_token, is_weight_N_T=_scatter(out.is_weight_R, rows, shape),
        teacher_entropy_N_T=_scatter(out.teacher_entropy_R, rows, shape),
        student_entropy_N_T=_scatter(out.student_entropy_R, rows, shape),
        entropy_weight_N_T=_scatter(out.entropy_weight_R, rows, shape),
    )  # fmt: skip
    mask = weighting.loss_mask_N_T
    metrics = {"divergence_mean": float(masked_mean(divergence, mask)), "loss_tokens": float(mask.sum())}
    if result["is_weight_N_T"] is not None:
        metrics["is_weight_mean"] = float(masked_mean(result["is_weight_N_T"], mask))
        metrics["is_clipfrac"] = float(
            masked_mean((result["is_weight_N_T"] >= weighting.is_clip).float(), mask)
        )
    for key in ("teacher_entropy", "student_entropy"):
        if result[f"{key}_N_T"] is not None:
            metrics[f"{key}_mean"] = float(masked_mean(result[f"{key}_N_T"], mask))
    return ChunkedDistillation(**result, metrics=metrics)


def chunked_token_logp(
    student: StudentInputs,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk_tokens: int | None = None,
) -> TokenLogp:
    """Sampled-token log-probs log softmax(z/T)[y] (§0) at ``token_mask_N_T`` (all positions if None), chunk
    by chunk; differentiable w.r.t. hidden states and head (gradient recomputed per chunk); optional entropy.
    """
    if student.token_ids_N_T is None:
        raise ValueError("chunked_token_logp needs StudentInputs.token_ids_N_T")
    _check_inputs(student, None, student.token_ids_N_T)
    shape = student.token_ids_N_T.shape
    mask = student.token_mask_N_T
    rows = (
        torch.arange(shape.numel()) if mask is None else mask.reshape(-1).to(torch.bool).nonzero().reshape(-1)
    )
    rows = rows.to(student.hidden_N_T_H.device)
    settings = ChunkSettings(temperature=temperature, chunk_tokens=chunk_tokens)
    plan = ChunkPlan(
        n_loss=0, chunk_tokens=_chunk_tokens(settings, student.head.weight_V_H.shape[0]),
        temperature=temperature,
        divergence=settings.divergence, loss=LossRows(), coef_R=torch.zeros(0),
        ids_R=student.token_ids_N_T.reshape(-1)[rows].to(torch.long), student_entropy=entropy,
    )  # fmt: skip
    out = run_chunked(
        _take_rows(student.hidden_N_T_H, rows), student.head.weight_V_H, student.head.bias_V, plan
    )
    return TokenLogp(
        logp_N_T=_scatter(out.logp_R, rows, shape), entropy_N_T=_scatter(out.student_entropy_R, rows, shape)
    )


def lerp_teacher_hidden(a: TeacherHidden, b: TeacherHidden, weight: float) -> TeacherHidden:
    """A teacher whose logits are lerp(z_a, z_b, w) = (1−w)·z_a + w·z_b, as one hidden/head pair.

    Exact: [(1−w)·h_a, w·h_b] concatenated along H, against the head [W_a, W_b], gives (1−w)·z_a + w·z_b.
    Used by SDPO's trust-region self-teacher (§4.6) on the chunked path.
    """
    hidden = torch.cat([(1 - weight) * a.hidden_N_T_H, weight * b.hidden_N_T_H], dim=-1)
    head_w = torch.cat([a.head.weight_V_H, b.head.weight_V_H], dim=-1)
    biases = [(1 - weight) * a.head.bias_V if a.head.bias_V is not None else None,
              weight * b.head.bias_V if b.head.bias_V is not None else None]  # fmt: skip
    present = [x for x in biases if x is not None]
    bias = sum(present[1:], present[0]) if present else None
    return TeacherHidden(hidden_N_T_H=hidden, head=LinearHead(head_w, bias))
