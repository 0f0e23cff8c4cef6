"""SRPO (arXiv 2604.02288): sample-routed policy optimisation, GRPO and self-distillation in one loss.

ALGORITHMS.md §7.4. Failed rollouts with a correct sibling go to the SDPO branch (distilled toward the
self-teacher, each token weighted by exp(−β H_teacher) normalised to mean 1 over the SDPO-routed tokens);
every other rollout goes to the GRPO branch (whole-group advantage, PPO clip 0.2/0.28). One token-mean over
the union (``core.objectives.srpo_loss``). The GRPO branch follows Table 3 (std normalisation off, §11 A11).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.core.advantages import grpo_advantages
from opdkit.core.divergences import entropy_from_logits, topk_with_tail
from opdkit.core.losses import LossOutput, aggregation_denominator, clipped_surrogate, truncated_is_weight
from opdkit.core.objectives import srpo_loss
from opdkit.core.registry import Registry
from opdkit.core.weights import SrpoRouting, entropy_weights, srpo_routing
from opdkit.train.batch import Prepared, StepBatch
from opdkit.train.forward import self_teacher_logits, student_forward
from opdkit.train.methods.base import Method, MethodContext
from opdkit.train.methods.sdpo import SdpoConfig, distill_divergence, teacher_prompt_rows


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
    uses_self_teacher = True
    description = "SRPO: failed-with-correct-sibling -> entropy-weighted SDPO, others -> GRPO (§7.4)"

    def prepare(self, cfg: SrpoConfig, batch: StepBatch, ctx: MethodContext) -> Prepared:
        routing = srpo_routing(batch.success_N, batch.group_ids_N)
        adv_N = grpo_advantages(
            batch.rewards_N, batch.group_ids_N, normalize_std=cfg.normalize_std, eps=cfg.eps
        )
        prompts = teacher_prompt_rows(batch, ctx)
        sdpo_N = routing.sdpo_N & prompts.sd_mask_N  # a failed row with a correct sibling always has a demo
        token_mask = batch.response_mask_N_T.bool() & sdpo_N.unsqueeze(-1)
        rows = {**prompts.rows, "adv_N": adv_N, "sdpo_N": sdpo_N}
        rows["entropy_weight_N_T"] = entropy_weights(
            self._teacher_entropy(cfg, batch, rows, ctx), token_mask, beta=cfg.beta
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
        """Self-teacher entropy H[i,t] on the SDPO-routed rows (0 elsewhere), under no-grad."""
        entropy_N_T = torch.zeros(batch.response_ids_N_T.shape, dtype=torch.float32)
        idx = rows["sdpo_N"].nonzero().squeeze(-1)
        if idx.numel() == 0:
            return entropy_N_T
        sub = batch.select(idx)
        sub_rows = {k: v.index_select(0, idx) for k, v in rows.items()}
        teacher_logits = self_teacher_logits(ctx.self_teacher, ctx.student, sub_rows, sub, ctx.temperature)
        student_logits = student_forward(ctx.student, sub, ctx.temperature).logits_N_T_V
        entropy_N_T[idx] = _ENTROPY[cfg.entropy](student_logits, teacher_logits, cfg.top_k).cpu()
        return entropy_N_T.to(batch.response_ids_N_T.device)

    def denominators(self, cfg, batch, prepared):
        return {"agg": aggregation_denominator(batch.response_mask_N_T, "token-mean")}

    def loss(self, cfg: SrpoConfig, batch, prepared, denoms, ctx) -> LossOutput:
        rows = prepared.rows
        out = student_forward(ctx.student, batch, ctx.temperature)
        grpo = clipped_surrogate(
            out.logp_N_T, batch.old_logp_N_T, rows["adv_N"],
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
            mask_N_T=batch.response_mask_N_T,
        )  # fmt: skip
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


def register(methods: Registry) -> None:
    methods.add("srpo", Srpo())
