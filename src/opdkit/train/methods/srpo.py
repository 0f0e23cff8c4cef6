"""SRPO (arXiv 2604.02288): sample-routed policy optimisation, GRPO and self-distillation in one loss.

docs/algorithms.md §7.4. Failed rollouts with a correct sibling go to the SDPO branch (distilled toward the
self-teacher, each token weighted by exp(−β H_teacher) normalised to mean 1 over the SDPO-routed tokens);
every other rollout goes to the GRPO branch (whole-group advantage, PPO clip 0.2/0.28). One token-mean over
the union, as ``core.objectives.srpo_loss`` defines it, written as the sum of the two branches' token sums
over one denominator so that the SDPO branch runs on either forward path (``Srpo.loss``). The GRPO branch
follows Table 3 (std normalisation off, §11 A11).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.core.advantages import grpo_advantages
from opdkit.core.chunked import LossWeighting, StudentInputs, chunked_token_logp
from opdkit.core.composition import srpo_entropy_weights
from opdkit.core.divergences import entropy_from_logits, topk_with_tail
from opdkit.core.losses import LossOutput, aggregate, aggregation_denominator, clipped_surrogate
from opdkit.core.objectives import DistillAggregation
from opdkit.core.registry import Registry
from opdkit.core.weights import srpo_routing
from opdkit.train.batch import Prepared, Rows, StepBatch
from opdkit.train.methods.base import Method, MethodContext
from opdkit.train.methods.sdpo import SdpoConfig, TeacherPromptRows, chunk_settings, teacher_prompt_rows
from opdkit.train.student import FULL_LOGITS, StudentOutput


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


@dataclass(frozen=True)
class SrpoRows(Rows):
    """SRPO's hand-off: the teacher's prompts, the GRPO advantage (N,), the SDPO routing (N,) and the
    entropy weight exp(−β H_T) of each SDPO-routed token (N, T) (§7.4)."""

    teacher_prompts: TeacherPromptRows
    adv_N: torch.Tensor
    sdpo_N: torch.Tensor
    entropy_weight_N_T: torch.Tensor


class Srpo(Method[SrpoRows]):
    config_type = SrpoConfig
    min_group_size = 2
    uses_self_teacher = True
    description = "SRPO: failed-with-correct-sibling -> entropy-weighted SDPO, others -> GRPO (§7.4)"

    def hidden_state_loss(self, cfg: SrpoConfig) -> bool:
        return cfg.full_logit  # the sampled-token surrogate reads the teacher's full logits

    def prepare(self, cfg: SrpoConfig, batch: StepBatch, ctx: MethodContext) -> Prepared[SrpoRows]:
        adv_N = grpo_advantages(
            batch.rewards_N, batch.group_ids_N, normalize_std=cfg.normalize_std, eps=cfg.eps
        )
        prompts = teacher_prompt_rows(batch, ctx)
        routing = srpo_routing(batch.success_N, batch.group_ids_N, context_N=prompts.sd_mask_N)
        sdpo_N = routing.sdpo_N
        token_mask = batch.response_mask_N_T.bool() & sdpo_N.unsqueeze(-1)
        entropy_weight_N_T = srpo_entropy_weights(
            self._teacher_entropy(cfg, batch, prompts.rows, sdpo_N, ctx),
            batch.response_mask_N_T, sdpo_N, beta=cfg.beta,
        )  # fmt: skip
        rows = SrpoRows(prompts.rows, adv_N, sdpo_N, entropy_weight_N_T)
        metrics = {**prompts.stats, "srpo/sdpo_fraction": float(sdpo_N.float().mean())}
        has_signal = bool(token_mask.any()) or bool((adv_N != 0).any())
        return Prepared(rows, metrics=metrics, skip_reason=None if has_signal else "no SDPO row and A ≡ 0")

    @torch.no_grad()
    def _teacher_entropy(
        self, cfg: SrpoConfig, batch: StepBatch, prompts: TeacherPromptRows, sdpo_N: torch.Tensor,
        ctx: MethodContext,
    ) -> torch.Tensor:  # fmt: skip
        """Self-teacher entropy H[i,t] at the log-prob temperature on the SDPO-routed rows (0 elsewhere)."""
        entropy_N_T = torch.zeros(batch.response_ids_N_T.shape, device=batch.response_ids_N_T.device)
        idx = sdpo_N.nonzero().squeeze(-1)
        if idx.numel() == 0:
            return entropy_N_T
        sub = batch.sequences().select(idx)
        path = ctx.forward if cfg.entropy == "full" else FULL_LOGITS  # top-k buckets need the logits
        teacher_seqs = sub.with_prompts(prompts.ids_N_P[idx], prompts.mask_N_P[idx])
        teacher = path.self_teacher(ctx.self_teacher, ctx.student, teacher_seqs, ctx.temperature)
        if teacher.hidden is not None:
            view = teacher.hidden
            inputs = StudentInputs(view.hidden_N_T_H, view.head, sub.response_ids_N_T, sub.response_mask_N_T)
            entropy_N_T[idx] = chunked_token_logp(
                inputs, temperature=ctx.temperature, entropy=True
            ).entropy_N_T
            return entropy_N_T
        student_logits = FULL_LOGITS.student(ctx.student, sub, ctx.temperature).logits_N_T_V
        entropy_N_T[idx] = _ENTROPY[cfg.entropy](student_logits, teacher.logits_M_T_V, cfg.top_k)
        return entropy_N_T

    def denominators(self, cfg, batch, rows):
        return {"agg": aggregation_denominator(batch.response_mask_N_T, "token-mean")}

    def loss(self, cfg: SrpoConfig, batch, rows: SrpoRows, denoms, out: StudentOutput, ctx) -> LossOutput:
        """§7.4's union token-mean (Σ_grpo ℓ_GRPO m + Σ_sdpo ℓ_DW m) / Σ m: the SDPO term (entropy-weighted,
        IS-clipped) over the SDPO-routed tokens plus the GRPO surrogate over the rest, both divided by every
        valid token of the mini-batch; the self-teacher runs only on the SDPO-routed rows."""
        sdpo_rows = rows.sdpo_N.unsqueeze(-1)
        mask = batch.response_mask_N_T.bool()
        teacher = ctx.forward.self_teacher(
            ctx.self_teacher, ctx.student, rows.teacher_prompts.sequences(batch), ctx.temperature,
            rows_M=rows.sdpo_N.nonzero().squeeze(-1),
        )  # fmt: skip
        weighting = LossWeighting(
            mask & sdpo_rows,
            weight_N_T=rows.entropy_weight_N_T,
            old_logp_N_T=batch.old_logp_N_T if cfg.is_clip is not None else None,
            is_clip=cfg.is_clip,
            aggregation=DistillAggregation("token-mean", "valid"),
            global_denominator=denoms["agg"],
        )
        sdpo = ctx.forward.distill(
            out, teacher, weighting, chunk_settings(cfg, ctx),
            sampled_token=not cfg.full_logit, logp_everywhere=True,
        )  # fmt: skip
        grpo = self._grpo_branch(cfg, batch, rows, sdpo.logp_N_T)
        grpo_loss = aggregate(
            grpo.loss_N_T, mask & ~sdpo_rows, "token-mean", global_denominator=denoms["agg"]
        )
        total = mask.sum().clamp(min=1)
        metrics = {**sdpo.metrics, "sdpo_token_fraction": float((mask & sdpo_rows).sum() / total)}
        return LossOutput(loss=sdpo.loss + grpo_loss, metrics=metrics)

    @staticmethod
    def _grpo_branch(cfg: SrpoConfig, batch: StepBatch, rows: SrpoRows, logp_N_T: torch.Tensor):
        grpo_mask = batch.response_mask_N_T.bool() & ~rows.sdpo_N.unsqueeze(-1)
        return clipped_surrogate(
            logp_N_T, batch.old_logp_N_T, rows.adv_N,
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, mask_N_T=grpo_mask,
        )  # fmt: skip


def register(methods: Registry) -> None:
    methods.add("srpo", Srpo())
