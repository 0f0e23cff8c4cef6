"""SRPO (arXiv 2604.02288): sample-routed policy optimisation, GRPO and self-distillation in one loss.

docs/algorithms.md §7.4. Failed rollouts with a correct sibling go to the SDPO branch (distilled toward the
self-teacher, each token weighted by exp(−β H_teacher) normalised to mean 1 over the SDPO-routed tokens);
every other rollout goes to the GRPO branch (whole-group advantage, PPO clip 0.2/0.28). One token-mean over
the union (``core.objectives.srpo_loss``). The GRPO branch follows Table 3 (std normalisation off, §11 A11).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.core.advantages import grpo_advantages
from opdkit.core.chunked import (
    LinearHead,
    LossWeighting,
    StudentInputs,
    TeacherHidden,
    chunked_distillation_loss,
    chunked_token_logp,
)
from opdkit.core.composition import srpo_entropy_weights
from opdkit.core.divergences import entropy_from_logits, topk_with_tail
from opdkit.core.losses import (
    LossOutput,
    aggregate,
    aggregation_denominator,
    clipped_surrogate,
    truncated_is_weight,
)
from opdkit.core.objectives import DistillAggregation, srpo_loss
from opdkit.core.registry import Registry
from opdkit.core.weights import SrpoRouting, srpo_routing
from opdkit.train.batch import Prepared, StepBatch
from opdkit.train.forward import (
    self_teacher_hidden,
    self_teacher_logits,
    student_forward,
    student_inputs,
    use_hidden,
)
from opdkit.train.methods.base import Method, MethodContext
from opdkit.train.methods.sdpo import SdpoConfig, chunk_settings, distill_divergence, teacher_prompt_rows


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SrpoConfig(SdpoConfig):
    name: str = _f("srpo", "the method")
    normalize_std: bool = _f(False, "GRPO branch: divide by the group std (Table 3: off; §11 A11)")
    eps: float = _f(1e-6, "ε added to the std")
    clip_low: float = _f(0.2, "GRPO branch: PPO lower clip")
    clip_high: float = _f(0.28, "GRPO branch: PPO upper clip")
    dual_clip: float | None = _f(3.0, "GRPO branch: dual-clip constant (None = off)")
    beta: float = _f(1.0, "entropy weight exp(−β H) of the SDPO branch")
    entropy: str = _f("full", "teacher entropy over the 'full' vocabulary or the 'topk' (+tail) buckets")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.entropy not in _ENTROPY:
            raise ValueError(f"unknown method.entropy {self.entropy!r}; valid: {', '.join(_ENTROPY)}")


def _topk_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int | None) -> torch.Tensor:
    pair = topk_with_tail(student_logits, teacher_logits, k=k or teacher_logits.shape[-1], tail=True)
    return -(pair.teacher.exp() * pair.teacher).sum(dim=-1)


_ENTROPY = {
    "full": lambda student_logits, teacher_logits, k: entropy_from_logits(teacher_logits),
    "topk": _topk_entropy,
}


class Srpo(Method):
    config_type = SrpoConfig
    min_group_size = 2
    uses_self_teacher = True
    description = "SRPO: failed-with-correct-sibling -> entropy-weighted SDPO, others -> GRPO (§7.4)"

    def prepare(self, cfg: SrpoConfig, batch: StepBatch, ctx: MethodContext) -> Prepared:
        adv_N = grpo_advantages(
            batch.rewards_N, batch.group_ids_N, normalize_std=cfg.normalize_std, eps=cfg.eps
        )
        prompts = teacher_prompt_rows(batch, ctx)
        routing = srpo_routing(batch.success_N, batch.group_ids_N, context_N=prompts.sd_mask_N)
        sdpo_N = routing.sdpo_N
        token_mask = batch.response_mask_N_T.bool() & sdpo_N.unsqueeze(-1)
        rows = {**prompts.rows, "adv_N": adv_N, "sdpo_N": sdpo_N}
        rows["entropy_weight_N_T"] = srpo_entropy_weights(
            self._teacher_entropy(cfg, batch, rows, ctx), batch.response_mask_N_T, sdpo_N, beta=cfg.beta
        )
        metrics = {**prompts.stats, "srpo/sdpo_fraction": float(sdpo_N.float().mean())}
        has_signal = bool(token_mask.any()) or bool((adv_N != 0).any())
        return Prepared(
            rows=rows, metrics=metrics, skip_reason=None if has_signal else "no SDPO row and A ≡ 0"
        )

    @torch.no_grad()
    def _teacher_entropy(
        self, cfg: SrpoConfig, batch: StepBatch, rows: dict, ctx: MethodContext
    ) -> torch.Tensor:
        """Self-teacher entropy H[i,t] at the log-prob temperature on the SDPO-routed rows (0 elsewhere)."""
        entropy_N_T = torch.zeros(batch.response_ids_N_T.shape, device=batch.response_ids_N_T.device)
        idx = rows["sdpo_N"].nonzero().squeeze(-1)
        if idx.numel() == 0:
            return entropy_N_T
        sub, sub_rows = batch.select(idx), {k: v.index_select(0, idx) for k, v in rows.items()}
        if cfg.entropy == "full" and use_hidden(ctx.student, ctx.hidden_states):
            view = self_teacher_hidden(ctx.self_teacher, ctx.student, sub_rows, sub)
            inputs = StudentInputs(view.hidden_N_T_H, view.head, sub.response_ids_N_T, sub.response_mask_N_T)
            entropy_N_T[idx] = chunked_token_logp(
                inputs, temperature=ctx.temperature, entropy=True
            ).entropy_N_T
            return entropy_N_T
        teacher_logits = self_teacher_logits(ctx.self_teacher, ctx.student, sub_rows, sub, ctx.temperature)
        student_logits = student_forward(ctx.student, sub, ctx.temperature).logits_N_T_V
        entropy_N_T[idx] = _ENTROPY[cfg.entropy](student_logits, teacher_logits, cfg.top_k)
        return entropy_N_T

    def denominators(self, cfg, batch, prepared):
        return {"agg": aggregation_denominator(batch.response_mask_N_T, "token-mean")}

    def loss(self, cfg: SrpoConfig, batch, prepared, denoms, ctx) -> LossOutput:
        if cfg.full_logit and use_hidden(ctx.student, ctx.hidden_states):
            return self._chunked_loss(cfg, batch, prepared, denoms, ctx)
        rows = prepared.rows
        out = student_forward(ctx.student, batch, ctx.temperature)
        grpo = self._grpo_branch(cfg, batch, rows, out.logp_N_T)
        sdpo_N_T = torch.zeros_like(out.logp_N_T)
        idx = rows["sdpo_N"].nonzero().squeeze(-1)
        if idx.numel() > 0:  # the self-teacher runs only on the SDPO-routed rows
            sub = batch.select(idx)
            sub_out = type(out)(out.logits_N_T_V[idx], out.logp_N_T[idx])
            teacher_logits = self_teacher_logits(
                ctx.self_teacher, ctx.student, {k: v[idx] for k, v in rows.items()}, sub, ctx.temperature
            )
            div = distill_divergence(cfg, sub_out, teacher_logits, sub)
            isw = truncated_is_weight(sub_out.logp_N_T, sub.old_logp_N_T, cap=cfg.is_clip)
            sdpo_N_T = sdpo_N_T.index_put((idx,), div * isw * rows["entropy_weight_N_T"][idx])
        routing = SrpoRouting(sdpo_N=rows["sdpo_N"], grpo_N=~rows["sdpo_N"])
        return srpo_loss(
            grpo.loss_N_T, sdpo_N_T, routing, batch.response_mask_N_T, global_denominator=denoms["agg"]
        )

    @staticmethod
    def _grpo_branch(cfg: SrpoConfig, batch: StepBatch, rows: dict, logp_N_T: torch.Tensor):
        grpo_mask = batch.response_mask_N_T.bool() & ~rows["sdpo_N"].unsqueeze(-1)
        return clipped_surrogate(
            logp_N_T, batch.old_logp_N_T, rows["adv_N"],
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, mask_N_T=grpo_mask,
        )  # fmt: skip

    def _chunked_loss(self, cfg: SrpoConfig, batch, prepared, denoms, ctx) -> LossOutput:
        """§7.4's union token-mean from hidden states: the chunked SDPO term over the SDPO-routed tokens plus
        the GRPO surrogate over the rest, both divided by every valid token of the mini-batch."""
        rows = prepared.rows
        sdpo_rows = rows["sdpo_N"].unsqueeze(-1)
        mask = batch.response_mask_N_T.bool()
        teacher = self._teacher_for_rows(batch, rows, ctx)
        weighting = LossWeighting(
            mask & sdpo_rows,
            weight_N_T=rows["entropy_weight_N_T"],
            old_logp_N_T=batch.old_logp_N_T if cfg.is_clip is not None else None,
            is_clip=cfg.is_clip,
            aggregation=DistillAggregation("token-mean", "valid"),
            global_denominator=denoms["agg"],
        )
        out = chunked_distillation_loss(
            student_inputs(ctx.student, batch), teacher, weighting, chunk_settings(cfg, ctx)
        )
        grpo = self._grpo_branch(cfg, batch, rows, out.logp_N_T)
        grpo_loss = aggregate(
            grpo.loss_N_T, mask & ~sdpo_rows, "token-mean", global_denominator=denoms["agg"]
        )
        total = mask.sum().clamp(min=1)
        metrics = {**out.metrics, "sdpo_token_fraction": float((mask & sdpo_rows).sum() / total)}
        return LossOutput(loss=out.loss + grpo_loss, metrics=metrics)

    @staticmethod
    def _teacher_for_rows(batch: StepBatch, rows: dict, ctx: MethodContext) -> TeacherHidden:
        """Teacher hidden states on the SDPO-routed rows only, zeros elsewhere (never in the loss there)."""
        idx = rows["sdpo_N"].nonzero().squeeze(-1)
        if idx.numel() == batch.n:
            return self_teacher_hidden(ctx.self_teacher, ctx.student, rows, batch)
        head = ctx.student.get_output_embeddings()
        if idx.numel() == 0:  # no SDPO row: a zero teacher that the empty loss mask never reads
            zeros = torch.zeros(
                *batch.response_ids_N_T.shape, head.weight.shape[1], device=head.weight.device
            )
            return TeacherHidden(zeros, LinearHead(head.weight.detach()))
        sub = self_teacher_hidden(
            ctx.self_teacher,
            ctx.student,
            {k: v.index_select(0, idx) for k, v in rows.items()},
            batch.select(idx),
        )
        full = torch.zeros(
            batch.n, *sub.hidden_N_T_H.shape[1:], dtype=sub.hidden_N_T_H.dtype, device=sub.hidden_N_T_H.device
        )
        full[idx] = sub.hidden_N_T_H
        return TeacherHidden(full, sub.head)


def register(methods: Registry) -> None:
    methods.add("srpo", Srpo())
