"""The forward path of a run, chosen once when it starts, and the student's output it hands to the losses.

Two paths compute the same losses (equal value and gradient, ``tests/train/test_forward_paths.py``):

- ``HiddenStateForward`` (``model.hidden_state_losses: true``, the default): the decoder's final hidden
  states and the output head; log-probs and divergences come from ``core.chunked`` a chunk of tokens at a
  time, so the (N, T, V) logits never exist at once;
- ``FullLogitForward``: the model's full response logits (any causal LM).

``choose_forward(model, requested)`` picks one when the run starts: hidden states only where they are asked
for and the model's head reproduces its logits (``forward.hidden_path_ok``). The update step then runs the
student once per micro-batch, ``out = path.student(model, seqs, T)``, and hands ``out`` to the method's one
loss body, which reads

- ``out.logp_N_T``: the sampled tokens' log-probs with gradient (policy-gradient and MLE terms), and
- ``path.self_teacher(...)`` then ``path.distill(out, teacher, weighting, settings)``: the self-distillation
  term, weighted as ``core.chunked.LossWeighting`` says (mask, detached weights, IS clip, aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Protocol

import torch

from opdkit.core.chunked import (
    ChunkSettings,
    LinearHead,
    LossWeighting,
    StudentInputs,
    TeacherHidden,
    chunked_distillation_loss,
    chunked_token_logp,
)
from opdkit.core.divergences import distillation_token_loss, sampled_token_distill_loss
from opdkit.core.losses import masked_mean, truncated_is_weight
from opdkit.core.objectives import self_distillation_loss
from opdkit.core.sequence import token_logp
from opdkit.teachers.self_teacher import TeacherWeights
from opdkit.train.batch import Sequences
from opdkit.train.forward import forward_hidden, forward_response, hidden_path_ok
from opdkit.train.prefix import prefix_sharing_ok


@dataclass(frozen=True)
class StudentOutput:
    """The student on one micro-batch's sequences, with gradient: full logits or hidden states + head.

    logits_N_T_V: temperature-scaled response logits (full-logit path), else None.
    hidden: final hidden states at the response positions (N, T, H) and the head (hidden-state path), else
        None.
    ``logp_N_T``: log π(y_t | x, y_<t) of the sampled tokens (N, T), 0 at padding; computed when first read
    (on the hidden-state path it is one more chunked pass, which a distillation loss does not need).
    """

    seqs: Sequences
    temperature: float
    logits_N_T_V: torch.Tensor | None = None
    hidden: TeacherHidden | None = None

    @cached_property
    def logp_N_T(self) -> torch.Tensor:
        mask_N_T = self.seqs.response_mask_N_T
        if self.logits_N_T_V is not None:
            logp = token_logp(self.logits_N_T_V, self.seqs.response_ids_N_T)
            return torch.where(mask_N_T.bool(), logp, torch.zeros_like(logp))
        return chunked_token_logp(self.inputs(every_token=True), temperature=self.temperature).logp_N_T

    def inputs(self, *, every_token: bool) -> StudentInputs:
        """The hidden-state path's ``core.chunked`` inputs; ``every_token``: log-probs at every response
        token (else only at the loss mask's)."""
        if self.hidden is None:
            raise ValueError("StudentOutput.inputs: this output comes from the full-logit path")
        mask = self.seqs.response_mask_N_T if every_token else None
        return StudentInputs(self.hidden.hidden_N_T_H, self.hidden.head, self.seqs.response_ids_N_T, mask)


@dataclass(frozen=True)
class TeacherOutput:
    """The self-teacher on rows ``rows_M`` of the micro-batch (None: every row): full logits (M, T, V) or
    hidden states + head, matching the run's path."""

    logits_M_T_V: torch.Tensor | None = None
    hidden: TeacherHidden | None = None
    rows_M: torch.Tensor | None = None


@dataclass(frozen=True)
class Distillation:
    """A distillation term: the aggregated loss (0-dim), the sampled tokens' log-probs (N, T) with gradient
    where computed (None where the path did not compute them), and metrics over the loss tokens
    (``divergence_mean``, ``loss_tokens``, with an IS clip ``is_weight_mean`` and ``is_clipfrac``)."""

    loss: torch.Tensor
    logp_N_T: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


class ForwardPath(Protocol):
    """How the student and the self-teacher run, fixed for a run (module docstring)."""

    hidden: bool  # True: hidden states + head (``core.chunked``); False: full logits

    def student(self, model: torch.nn.Module, seqs: Sequences, temperature: float) -> StudentOutput: ...

    def self_teacher(
        self, weights: TeacherWeights, student: torch.nn.Module, seqs: Sequences, temperature: float,
        rows_M: torch.Tensor | None = None,
    ) -> TeacherOutput: ...  # fmt: skip

    def distill(
        self, out: StudentOutput, teacher: TeacherOutput, weighting: LossWeighting, settings: ChunkSettings,
        *, sampled_token: bool = False, logp_everywhere: bool = False,
    ) -> Distillation: ...  # fmt: skip


def _teacher_run(seqs: Sequences, forward):
    """``run(model)`` for ``TeacherWeights``: the forward on the teacher's context in eval mode."""

    def run(model: torch.nn.Module):
        was_training = model.training
        model.eval()
        out = forward(model, seqs)
        model.train(was_training)
        return out

    return run


def _teacher_rows(seqs: Sequences, rows_M: torch.Tensor | None) -> tuple[Sequences, torch.Tensor | None]:
    """The teacher's sequences on ``rows_M`` (None when that is every row)."""
    if rows_M is None or rows_M.numel() == seqs.n:
        return seqs, None
    return seqs.select(rows_M), rows_M


class FullLogitForward:
    """Full (N, T, V) logits for the student and the self-teacher; ``core.divergences`` on them."""

    hidden: ClassVar[bool] = False

    def student(self, model: torch.nn.Module, seqs: Sequences, temperature: float) -> StudentOutput:
        return StudentOutput(
            seqs, temperature, logits_N_T_V=forward_response(model, seqs, temperature).logits_N_T_V
        )

    def self_teacher(
        self, weights: TeacherWeights, student: torch.nn.Module, seqs: Sequences, temperature: float,
        rows_M: torch.Tensor | None = None,
    ) -> TeacherOutput:  # fmt: skip
        seqs, rows_M = _teacher_rows(seqs, rows_M)
        if rows_M is not None and rows_M.numel() == 0:
            return TeacherOutput(rows_M=rows_M)
        run = _teacher_run(seqs, lambda m, s: forward_response(m, s, temperature).logits_N_T_V)
        return TeacherOutput(logits_M_T_V=weights.logits(run, student), rows_M=rows_M)

    def distill(
        self, out: StudentOutput, teacher: TeacherOutput, weighting: LossWeighting, settings: ChunkSettings,
        *, sampled_token: bool = False, logp_everywhere: bool = False,
    ) -> Distillation:  # fmt: skip
        """D on the teacher's rows (0 elsewhere), then ``core.objectives.self_distillation_loss`` with the IS
        weight and the caller's weight as detached factors: the same as ``core.chunked`` computes."""
        logp_N_T = out.logp_N_T
        divergence_N_T = _divergence(out, teacher, settings, sampled_token)
        is_weight_N_T = (
            None
            if weighting.is_clip is None
            else truncated_is_weight(logp_N_T, weighting.old_logp_N_T, cap=weighting.is_clip)
        )
        weight = weighting.weight_N_T
        question_weight_N = weight if weight is not None and weight.dim() == 1 else None
        factor_N_T = is_weight_N_T
        if weight is not None and weight.dim() == 2:
            w = weight.detach().float()
            factor_N_T = w if factor_N_T is None else factor_N_T * w
        result = self_distillation_loss(
            divergence_N_T, weighting.loss_mask_N_T, is_weight_N_T=factor_N_T,
            question_weight_N=question_weight_N, aggregation=weighting.aggregation,
            global_denominator=weighting.global_denominator,
        )  # fmt: skip
        metrics = _metrics(divergence_N_T, is_weight_N_T, weighting)
        return Distillation(result.loss, logp_N_T, metrics)


def _divergence(
    out: StudentOutput, teacher: TeacherOutput, settings: ChunkSettings, sampled_token: bool
) -> torch.Tensor:
    """D[i,t] (N, T) on the teacher's rows, 0 on the others: full-vocabulary / top-k(+tail) divergence, or
    the sampled-token surrogate (§3.1, §4.7)."""
    rows_M = teacher.rows_M
    logits, logp, ids = out.logits_N_T_V, out.logp_N_T, out.seqs.response_ids_N_T
    if rows_M is not None:
        if rows_M.numel() == 0:
            return torch.zeros_like(logp)
        logits, logp, ids = logits[rows_M], logp[rows_M], ids[rows_M]
    spec = settings.divergence
    if sampled_token:
        d = sampled_token_distill_loss(logp, token_logp(teacher.logits_M_T_V, ids))
    else:
        d = distillation_token_loss(
            logits, teacher.logits_M_T_V, alpha=spec.alpha, top_k=spec.top_k, tail=spec.tail
        )
    return d if rows_M is None else torch.zeros_like(out.logp_N_T).index_put((rows_M,), d)


def _metrics(
    divergence_N_T: torch.Tensor, is_weight_N_T: torch.Tensor | None, weighting: LossWeighting
) -> dict[str, float]:
    """The metrics ``core.chunked`` reports, over the loss tokens."""
    mask = weighting.loss_mask_N_T
    metrics = {
        "divergence_mean": float(masked_mean(divergence_N_T.detach(), mask)),
        "loss_tokens": float(mask.sum()),
    }
    if is_weight_N_T is not None:
        metrics["is_weight_mean"] = float(masked_mean(is_weight_N_T, mask))
        metrics["is_clipfrac"] = float(masked_mean((is_weight_N_T >= weighting.is_clip).float(), mask))
    return metrics


@dataclass(frozen=True)
class HiddenStateForward:
    """Hidden states + output head for the student and the self-teacher; ``core.chunked`` on them.

    share_prompts: run each distinct prompt once (``train.prefix``; decided by ``prefix_sharing_ok``).
    """

    share_prompts: bool = True
    hidden: ClassVar[bool] = True

    def student(self, model: torch.nn.Module, seqs: Sequences, temperature: float) -> StudentOutput:
        view = forward_hidden(model, seqs, share_prompts=self.share_prompts)
        return StudentOutput(seqs, temperature, hidden=view)

    def self_teacher(
        self, weights: TeacherWeights, student: torch.nn.Module, seqs: Sequences, temperature: float,
        rows_M: torch.Tensor | None = None,
    ) -> TeacherOutput:  # fmt: skip
        seqs, rows_M = _teacher_rows(seqs, rows_M)
        if rows_M is not None and rows_M.numel() == 0:
            return TeacherOutput(rows_M=rows_M)
        run = _teacher_run(seqs, lambda m, s: forward_hidden(m, s, share_prompts=self.share_prompts))
        return TeacherOutput(hidden=weights.hidden(run, student), rows_M=rows_M)

    def distill(
        self, out: StudentOutput, teacher: TeacherOutput, weighting: LossWeighting, settings: ChunkSettings,
        *, sampled_token: bool = False, logp_everywhere: bool = False,
    ) -> Distillation:  # fmt: skip
        """``core.chunked.chunked_distillation_loss``; the teacher's hidden states are zeros on the rows it
        did not run on (outside the loss mask, never read)."""
        if sampled_token:
            raise ValueError("the sampled-token surrogate needs the full-logit path (choose_forward)")
        result = chunked_distillation_loss(
            out.inputs(every_token=logp_everywhere), _every_row(out, teacher), weighting, settings
        )
        return Distillation(result.loss, result.logp_N_T, dict(result.metrics))


def _every_row(out: StudentOutput, teacher: TeacherOutput) -> TeacherHidden:
    """The teacher's hidden states on every row of ``out``: its own rows, zeros elsewhere."""
    if teacher.rows_M is None:
        return teacher.hidden
    head = out.hidden.head
    if teacher.hidden is None:  # no row: a zero teacher that the empty loss mask never reads
        zeros = torch.zeros(
            *out.seqs.response_ids_N_T.shape, head.weight_V_H.shape[1], device=head.weight_V_H.device
        )
        return TeacherHidden(zeros, LinearHead(head.weight_V_H.detach()))
    sub = teacher.hidden.hidden_N_T_H
    full = torch.zeros(out.seqs.n, *sub.shape[1:], dtype=sub.dtype, device=sub.device)
    full[teacher.rows_M] = sub
    return TeacherHidden(full, teacher.hidden.head)


HIDDEN_STATES = HiddenStateForward()
FULL_LOGITS = FullLogitForward()


def choose_forward(model: torch.nn.Module, requested: bool) -> ForwardPath:
    """The run's path: hidden states where ``requested`` and ``model``'s head reproduces its logits (sharing
    repeated prompts where ``prefix_sharing_ok``), else full logits. Called once when the run starts (the
    checks run short forwards); the self-teacher, a copy of the student, follows the same path."""
    if not (requested and hidden_path_ok(model)):
        return FULL_LOGITS
    return HiddenStateForward(share_prompts=prefix_sharing_ok(model))


@torch.no_grad()
def old_logprobs(
    path: ForwardPath, model: torch.nn.Module, seqs: Sequences, temperature: float, micro_batch: int
) -> torch.Tensor:
    """Pre-update log-probs of the sampled tokens (N, T), 0 at padding, in micro-batches of ``micro_batch``
    rows (0: all) under no-grad, on the run's path."""
    was_training = model.training
    model.eval()
    out = []
    step = micro_batch or seqs.n
    for start in range(0, seqs.n, step):
        rows = torch.arange(start, min(start + step, seqs.n))
        out.append(path.student(model, seqs.select(rows), temperature).logp_N_T)
    model.train(was_training)
    return torch.cat(out)
