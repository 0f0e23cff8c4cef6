"""The autograd Function behind ``opdkit.core.chunked``: one pass over row chunks, analytic gradients.

Inputs are already gathered rows: student hidden states (R, H) (the first ``n_loss`` rows are in the loss,
the rest only need log-probs), the student head (V, H) (+ bias), and a ``ChunkPlan`` with everything that
carries no gradient. Forward, per chunk of c rows: z = (h·Wᵀ + b)/T in float32 (float64 for float64 inputs),
s = z − logsumexp(z) in place, the sampled-token log-prob and entropies, the teacher's log-probs the same
way, the divergence and its gradient dD/dz (``divergence_grads``), scaled by each row's coefficient
(aggregation × weight × IS × entropy weight) / T, and immediately reduced into grad_h[rows] = dz·W, grad_W
+= dzᵀ·h, grad_b += Σ dz. Backward multiplies those buffers by the incoming gradient of the loss and, only
when the returned log-probs were used downstream, adds their gradient (onehot(y) − p)/T·g, recomputing each
chunk's logits. The buffers are handed to autograd without a copy; a second backward through a retained
graph recomputes them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.core.divergence_grads import (
    ChunkDivergence,
    DivergenceSpec,
    entropy_rows,
    full_vocab_divergence,
    log_softmax_,
    support_divergence,
    topk_divergence,
)
from opdkit.core.losses import truncated_is_weight


@dataclass(frozen=True)
class LossRows:
    """Teacher data at the loss rows: hidden states and head (no grad), or a server's top-K ids, log-probs."""

    teacher_hidden_R_H: torch.Tensor | None = None
    teacher_weight_V_H: torch.Tensor | None = None
    teacher_bias_V: torch.Tensor | None = None
    support_ids_R_K: torch.Tensor | None = None
    support_logp_R_K: torch.Tensor | None = None


@dataclass(frozen=True)
class ChunkPlan:
    """Everything besides the differentiable tensors. ``coef_R``: aggregation coefficient × caller weight at
    the loss rows (see ``chunked._aggregation_coefficients``); ``weight_R``: the caller weight alone (for the
    per-token output)."""

    n_loss: int
    chunk_tokens: int
    temperature: float
    divergence: DivergenceSpec
    loss: LossRows
    coef_R: torch.Tensor
    weight_R: torch.Tensor | None = None
    ids_R: torch.Tensor | None = None
    old_logp_R: torch.Tensor | None = None
    is_clip: float | None = None
    entropy_beta: float | None = None
    entropy_mean: float | torch.Tensor | None = None
    student_entropy: bool = False
    teacher_entropy: bool = False


@dataclass
class ChunkRunOutput:
    """Per-row results (loss rows first); filled by the forward pass, all detached except loss and logp."""

    loss: torch.Tensor | None = None
    logp_R: torch.Tensor | None = None
    divergence_R: torch.Tensor | None = None
    per_token_R: torch.Tensor | None = None
    is_weight_R: torch.Tensor | None = None
    teacher_entropy_R: torch.Tensor | None = None
    student_entropy_R: torch.Tensor | None = None
    entropy_weight_R: torch.Tensor | None = None
    parts: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, name: str, value: torch.Tensor | None) -> None:
        if value is not None:
            self.parts.setdefault(name, []).append(value)

    def collect(self, name: str) -> torch.Tensor | None:
        return torch.cat(self.parts[name]) if name in self.parts else None


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _logits(
    hidden_c_H: torch.Tensor,
    weight_V_H: torch.Tensor,
    bias_V: torch.Tensor | None,
    plan: ChunkPlan,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """z = (h·Wᵀ + b)/T in the compute dtype, written into ``out`` (a (c, V) workspace) when given."""
    h = hidden_c_H.to(weight_V_H.dtype)
    dtype = _compute_dtype(hidden_c_H, weight_V_H)
    direct = out if out is not None and weight_V_H.dtype == dtype else None  # bf16 products need a cast
    if bias_V is None:
        z = torch.mm(h, weight_V_H.T, out=direct)
    else:
        z = torch.addmm(bias_V, h, weight_V_H.T, out=direct)
    if out is not None and direct is None:
        z = out.copy_(z)
    z = z.to(dtype)
    return z.div_(plan.temperature) if plan.temperature != 1.0 else z


class _Workspace:
    """The two (chunk, V) buffers every chunk reuses (student and teacher logits, later log-probs and dD/dz):
    allocating them afresh per chunk lets a new chunk's buffer appear before the last one is returned."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> None:
        self.student = torch.empty(rows, vocab, dtype=dtype, device=device)
        self.teacher = torch.empty(rows, vocab, dtype=dtype, device=device)


def _chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


@dataclass
class _Grads:
    """Gradient buffers. grad W starts uninitialised: the first chunk writes it with a plain product and later
    chunks accumulate (zero-filling (V, H) first would cost a full pass over it)."""

    hidden_R_H: torch.Tensor | None
    weight_V_H: torch.Tensor | None
    bias_V: torch.Tensor | None
    weight_written: bool = False

    @classmethod
    def create(cls, hidden, weight, bias, needs: tuple[bool, ...]) -> _Grads:
        return cls(
            torch.zeros_like(hidden) if needs[0] else None,
            torch.empty_like(weight) if needs[1] else None,
            torch.zeros_like(bias) if bias is not None and needs[2] else None,
        )

    def add_chunk(self, a: int, b: int, dz_c_V: torch.Tensor, hidden_c_H, weight_V_H) -> None:
        dz = dz_c_V.to(weight_V_H.dtype)
        if self.hidden_R_H is not None:
            self.hidden_R_H[a:b] += (dz @ weight_V_H).to(self.hidden_R_H.dtype)
        if self.weight_V_H is not None:
            if self.weight_written:
                self.weight_V_H.addmm_(dz.T, hidden_c_H.to(dz.dtype))
            else:
                torch.mm(dz.T, hidden_c_H.to(dz.dtype), out=self.weight_V_H)
                self.weight_written = True
        if self.bias_V is not None:
            self.bias_V += dz.sum(dim=0).to(self.bias_V.dtype)

    def finish(self) -> _Grads:
        """Zero grad W if no chunk wrote it (no loss rows, or an unused output)."""
        if self.weight_V_H is not None and not self.weight_written:
            self.weight_V_H.zero_()
            self.weight_written = True
        return self

    def scale(self, factor: torch.Tensor | float) -> None:
        for g in (self.hidden_R_H, self.weight_V_H, self.bias_V):
            if g is not None:
                g.mul_(factor)


def _teacher_logp(plan: ChunkPlan, a: int, b: int, out: torch.Tensor) -> torch.Tensor:
    rows = plan.loss
    zt = _logits(rows.teacher_hidden_R_H[a:b], rows.teacher_weight_V_H, rows.teacher_bias_V, plan, out)
    return log_softmax_(zt)


def _divergence(plan: ChunkPlan, s: torch.Tensor, t, idx, a: int, b: int, need_grad: bool) -> ChunkDivergence:
    spec = plan.divergence
    if plan.loss.support_ids_R_K is not None:
        ids, logp = plan.loss.support_ids_R_K[a:b], plan.loss.support_logp_R_K[a:b]
        return support_divergence(s, ids, logp, spec.alpha, need_grad=need_grad)
    if spec.top_k is None:
        return full_vocab_divergence(s, t, spec.alpha, need_grad=need_grad)
    return topk_divergence(s, t, idx, spec, need_grad=need_grad)


@dataclass
class _EntropyShift:
    """exp(−β(H − H0)) with H0 the first chunk's mean: the normaliser is applied at the end, and the shift
    keeps the unnormalised weights in floating-point range whatever the entropies are."""

    beta: float
    mean: float | torch.Tensor | None
    shift: torch.Tensor | None = None
    total: torch.Tensor | float = 0.0

    def weights(self, entropy_c: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:  # the whole batch's normaliser is given: exact weights now
            log_mean = torch.log(torch.as_tensor(self.mean, dtype=entropy_c.dtype, device=entropy_c.device))
            return torch.exp(-self.beta * entropy_c - log_mean)
        if self.shift is None:
            self.shift = entropy_c.mean()
        w = torch.exp(-self.beta * (entropy_c - self.shift))
        self.total = self.total + w.sum()
        return w

    def normaliser(self, n_rows: int) -> torch.Tensor | float:
        """Divide the loss, gradients and weights by this (1 when the mean was given)."""
        if self.mean is not None or n_rows == 0:
            return 1.0
        return self.total / n_rows


@dataclass
class _Pass:
    """What every chunk of one forward pass reads: the Function's inputs, the plan, the gradient buffers."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    plan: ChunkPlan
    grads: _Grads | None
    ent_shift: _EntropyShift | None
    work: _Workspace


def _loss_chunk(run: _Pass, a: int, b: int, out: ChunkRunOutput) -> torch.Tensor:
    """One chunk of loss rows: statistics into ``out``, gradient into the buffers; returns Σ coef·D."""
    hidden, weight, bias, plan, grads, ent_shift = (
        run.hidden, run.weight, run.bias, run.plan, run.grads, run.ent_shift
    )  # fmt: skip
    z = _logits(hidden[a:b], weight, bias, plan, run.work.student[: b - a])
    spec = plan.divergence
    idx = None
    if spec.top_k is not None and plan.loss.support_ids_R_K is None:
        idx = z.topk(min(spec.top_k, z.shape[-1]), dim=-1).indices
    s = log_softmax_(z)
    logp = None if plan.ids_R is None else s.gather(-1, plan.ids_R[a:b, None]).squeeze(-1)
    out.add("logp", logp)
    out.add("student_entropy", entropy_rows(s) if plan.student_entropy else None)
    t = None if plan.loss.teacher_hidden_R_H is None else _teacher_logp(plan, a, b, run.work.teacher[: b - a])
    teacher_h = entropy_rows(t) if plan.teacher_entropy else None
    out.add("teacher_entropy", teacher_h)
    weight_c = s.new_ones(b - a) if plan.weight_R is None else plan.weight_R[a:b].to(s.dtype)
    coef = plan.coef_R[a:b].to(s.dtype)
    if plan.is_clip is not None:
        is_w = truncated_is_weight(logp, plan.old_logp_R[a:b], cap=plan.is_clip).to(s.dtype)
        out.add("is_weight", is_w)
        coef, weight_c = coef * is_w, weight_c * is_w
    if ent_shift is not None:
        ent_w = ent_shift.weights(teacher_h)
        out.add("entropy_weight", ent_w)
        coef, weight_c = coef * ent_w, weight_c * ent_w
    need_grad = grads is not None
    div = _divergence(plan, s, t, idx, a, b, need_grad)
    del t
    out.add("divergence", div.value_R)
    out.add("per_token", weight_c * div.value_R)
    if need_grad:
        dz = div.grad_R_V.mul_((coef / plan.temperature).unsqueeze(1))
        grads.add_chunk(a, b, dz, hidden[a:b], weight)
    return torch.dot(coef, div.value_R)


def _logp_chunk(run: _Pass, a: int, b: int, out: ChunkRunOutput) -> None:
    hidden, weight, bias, plan = run.hidden, run.weight, run.bias, run.plan
    s = log_softmax_(_logits(hidden[a:b], weight, bias, plan, run.work.student[: b - a]))
    out.add("logp", None if plan.ids_R is None else s.gather(-1, plan.ids_R[a:b, None]).squeeze(-1))
    out.add("student_entropy", entropy_rows(s) if plan.student_entropy else None)


def _forward_pass(
    hidden, weight, bias, plan: ChunkPlan, needs: tuple[bool, ...], out: ChunkRunOutput
) -> _Grads | None:
    """Every chunk once: results into ``out``, the loss gradient into the returned buffers."""
    grads = _Grads.create(hidden, weight, bias, needs) if any(needs) and plan.n_loss else None
    ent_shift = None if plan.entropy_beta is None else _EntropyShift(plan.entropy_beta, plan.entropy_mean)
    rows = min(plan.chunk_tokens, hidden.shape[0])
    work = _Workspace(rows, weight.shape[0], _compute_dtype(hidden, weight), hidden.device)
    run = _Pass(hidden, weight, bias, plan, grads, ent_shift, work)
    total = torch.zeros((), dtype=_compute_dtype(hidden, weight), device=hidden.device)
    for a, b in _chunks(0, plan.n_loss, plan.chunk_tokens):
        total += _loss_chunk(run, a, b, out)
    for a, b in _chunks(plan.n_loss, hidden.shape[0], plan.chunk_tokens):
        _logp_chunk(run, a, b, out)
    _finish(out, ent_shift, plan, grads, total)
    return None if grads is None else grads.finish()


class _ChunkedHeadLoss(torch.autograd.Function):
    """(hidden_R_H, weight_V_H, bias_V) -> (loss, logp_R); see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, plan: ChunkPlan, out: ChunkRunOutput):
        ctx.set_materialize_grads(False)
        needs = tuple(ctx.needs_input_grad[:3])
        grads = _forward_pass(hidden, weight, bias, plan, needs, out)
        ctx.save_for_backward(hidden, weight, bias)
        ctx.plan, ctx.grads, ctx.needs = plan, grads, needs
        if out.logp_R is None:
            out.logp_R = torch.zeros(0, dtype=_compute_dtype(hidden, weight), device=hidden.device)
        return out.loss, out.logp_R

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_logp):
        hidden, weight, bias = ctx.saved_tensors
        if hasattr(ctx, "grads"):
            # Hand the buffers over without keeping a reference, so autograd can adopt them as .grad
            # instead of copying a (V, H) tensor.
            grads = ctx.grads
            del ctx.grads
        else:  # a second backward through a retained graph: the first one gave the buffers away
            grads = _forward_pass(hidden, weight, bias, ctx.plan, ctx.needs, ChunkRunOutput())
        if grads is None or grad_loss is None:
            grads = _Grads.create(hidden, weight, bias, ctx.needs)
        elif not bool(grad_loss == 1):
            grads.scale(grad_loss)
        if grad_logp is not None and grad_logp.numel() and bool(grad_logp.any()):
            _add_logp_grad(grads, hidden, weight, bias, ctx.plan, grad_logp)
        grads.finish()
        return grads.hidden_R_H, grads.weight_V_H, grads.bias_V, None, None


def _finish(
    out: ChunkRunOutput, ent_shift, plan: ChunkPlan, grads: _Grads | None, total: torch.Tensor
) -> None:
    """Concatenate the per-chunk results and apply the entropy normaliser to loss, weights and gradients."""
    expected = {
        "logp": plan.ids_R is not None, "divergence": True, "per_token": True,
        "is_weight": plan.is_clip is not None, "teacher_entropy": plan.teacher_entropy,
        "student_entropy": plan.student_entropy, "entropy_weight": plan.entropy_beta is not None,
    }  # fmt: skip
    for name, wanted in expected.items():  # no rows at all (empty mask): empty results rather than None
        value = (out.collect(name) if name in out.parts else total.new_zeros(0)) if wanted else None
        setattr(out, f"{name}_R", value)
    weights = out.entropy_weight_R
    norm = ent_shift.normaliser(plan.n_loss) if ent_shift is not None else 1.0
    if not isinstance(norm, float):
        total = total / norm
        weights, out.per_token_R = weights / norm, out.per_token_R / norm
        if grads is not None:
            grads.scale(1.0 / norm)
    out.entropy_weight_R = weights
    out.loss = total


def _add_logp_grad(grads: _Grads, hidden, weight, bias, plan: ChunkPlan, grad_logp_R: torch.Tensor) -> None:
    """d logp_r/dz = onehot(y_r) − p_r; recomputes each chunk's logits (only runs when logp is used)."""
    for a, b in _chunks(0, hidden.shape[0], plan.chunk_tokens):
        g = grad_logp_R[a:b]
        if not bool(g.any()):
            continue
        z = _logits(hidden[a:b], weight, bias, plan)
        g = g.to(z.dtype) / plan.temperature
        dz = torch.softmax(z, dim=-1)
        del z
        dz.mul_(-g.unsqueeze(1)).scatter_add_(-1, plan.ids_R[a:b, None], g.unsqueeze(1))
        grads.add_chunk(a, b, dz, hidden[a:b], weight)


def run_chunked(
    hidden_R_H: torch.Tensor, weight_V_H: torch.Tensor, bias_V: torch.Tensor | None, plan: ChunkPlan
) -> ChunkRunOutput:
    """Run the Function; ``loss`` and ``logp_R`` of the result are differentiable, the rest detached."""
    out = ChunkRunOutput()
    loss, logp = _ChunkedHeadLoss.apply(hidden_R_H, weight_V_H, bias_V, plan, out)
    out.loss = loss
    out.logp_R = logp if plan.ids_R is not None else None
    return out
