"""Self-distillation: SDPO and its question-weighted variants SC-SDPO, hard filter and PACED.

- ``sdpo`` (§4): the EMA self-teacher sees a successful sibling (or feedback) in context; the
  student is distilled toward it with the top-100 + tail JSD (α = 0.5), IS clip 2, over the rows that have
  a teacher context (``sd_mask``), aggregated per sequence over all sequences (§11 A8).
- ``sc_sdpo`` (§6, SC-SDPO arXiv 2605.27765): the same loss times w_q = (p_q(1−p_q))^α normalised to mean 1
  over the step's informative questions (α = 0.5; ``sc_alpha: 1.0`` is the "variance" variant).
- ``sdpo_hard_filter`` (§6.4): w_q = 1[0 < p_q < 1].
- ``sdpo_paced`` (§7.3): w_q from the initial policy's offline pass rate (n0 samples at T = 1), frozen.
A step whose question weights are all zero makes no update and no EMA update (§6.3), unless
``optim.step_on_empty`` asks for the reference's zero-gradient step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opdkit.core.chunked import ChunkSettings, DivergenceSpec, LossWeighting
from opdkit.core.composition import QuestionWeightInputs, question_pass_rates, question_weights
from opdkit.core.losses import AGG_MODES, DENOMINATORS, LossOutput, aggregation_denominator
from opdkit.core.objectives import DistillAggregation
from opdkit.core.registry import Registry
from opdkit.core.sequence import left_pad
from opdkit.core.weights import paced_weights
from opdkit.teachers.self_teacher import RolloutTexts, build_teacher_context
from opdkit.train.batch import Prepared, Rows, Sequences, StepBatch
from opdkit.train.configio import doc
from opdkit.train.methods.base import Method, MethodConfig, MethodContext, weight_stats
from opdkit.train.student import StudentOutput


def _f(default, help: str, **bounds: float):
    return doc(default, help, **bounds)  # bounds: ge/gt/le/lt, checked when the config is loaded


@dataclass(frozen=True)
class SdpoConfig(MethodConfig):
    name: str = _f("sdpo", "the method")
    alpha: float = _f(
        0.5, "divergence: 0 forward KL, 1 reverse KL, else generalised JSD (0.5 symmetric)", ge=0, le=1
    )
    top_k: int | None = _f(100, "distil on the student's top-k support (None = full vocabulary)", ge=1)
    tail: bool = _f(True, "append the tail bucket to the top-k support (else renormalise over k)")
    is_clip: float | None = _f(2.0, "importance-ratio cap min(π_θ/π_old, c) on the loss (None = off)", gt=0)
    full_logit: bool = _f(True, "False: sampled-token surrogate sg(logp − logp_T)·logp (needs alpha = 1)")
    agg: str = _f("seq-mean-token-mean", "aggregation mode (§2.3)")
    denominator: str = _f("per_sequence_all", "'per_sequence_all' (reference, §11 A8) or 'valid'")

    def __post_init__(self) -> None:
        if not self.full_logit and self.alpha != 1.0:
            raise ValueError("method.full_logit=false (sampled-token distillation) requires method.alpha=1.0")
        if self.agg not in AGG_MODES:
            raise ValueError(f"unknown method.agg {self.agg!r}; valid: {', '.join(AGG_MODES)}")
        if self.denominator not in DENOMINATORS:
            raise ValueError(
                f"unknown method.denominator {self.denominator!r}; valid: {', '.join(DENOMINATORS)}"
            )


@dataclass(frozen=True)
class ScSdpoConfig(SdpoConfig):
    name: str = _f("sc_sdpo", "the method")
    sc_alpha: float = _f(0.5, "exponent α of (p(1−p))^α (0.5 scale-consistent, 1.0 variance)", ge=0)


@dataclass(frozen=True)
class HardFilterConfig(SdpoConfig):
    name: str = _f("sdpo_hard_filter", "the method")


@dataclass(frozen=True)
class PacedConfig(SdpoConfig):
    name: str = _f("sdpo_paced", "the method")
    offline_samples: int = _f(
        8, "n0: samples per training question for the offline pass rate (>= 2: a fractional p0)", ge=2
    )
    offline_temperature: float = _f(1.0, "sampling temperature of the offline pass", gt=0)
    kernel_a: float = _f(1.0, "Beta kernel p^a (1−p)^b: a", ge=0)
    kernel_b: float = _f(1.0, "Beta kernel p^a (1−p)^b: b", ge=0)


@dataclass(frozen=True)
class TeacherPromptRows(Rows):
    """The self-teacher's reprompted context of each row (§4.2): left-padded ids (N, P) and mask, P being
    the teacher prompts' own width."""

    ids_N_P: torch.Tensor
    mask_N_P: torch.Tensor

    def sequences(self, batch: StepBatch) -> Sequences:
        """The self-teacher's forward input: these prompts, then the batch's responses."""
        return batch.sequences().with_prompts(self.ids_N_P, self.mask_N_P)


@dataclass(frozen=True)
class TeacherPrompts:
    """Reprompted teacher prompts as left-padded rows, the SDPO mask (N,) and ``sdpo/*`` statistics."""

    rows: TeacherPromptRows
    sd_mask_N: torch.Tensor
    stats: dict[str, float]


@dataclass(frozen=True)
class SdpoRows(Rows):
    """The SDPO family's hand-off: the teacher's prompts, the tokens in the loss (N, T) (response mask ×
    ``sd_mask``) and the question weight w_q of each row (N,) (None for plain SDPO)."""

    teacher_prompts: TeacherPromptRows
    loss_mask_N_T: torch.Tensor
    question_weight_N: torch.Tensor | None = None


def teacher_prompt_rows(batch: StepBatch, ctx: MethodContext) -> TeacherPrompts:
    """Build the self-teacher's context for every row of the batch (§4.2-§4.5)."""
    texts = RolloutTexts(
        messages=batch.messages,
        response_texts=batch.response_texts,
        success=batch.success_N.tolist(),
        feedback=batch.feedback,
        group_ids=batch.group_ids_N.tolist(),
    )
    context = build_teacher_context(ctx.tokenizer, texts, ctx.self_teacher_options, ctx.chat_kwargs)
    ids, mask = left_pad(context.prompt_ids, ctx.tokenizer.pad_token_id or 0)
    device = batch.response_ids_N_T.device
    rows = TeacherPromptRows(ids.to(device), mask.to(device))
    stats = {f"sdpo/{k}": v for k, v in context.stats.items()}
    return TeacherPrompts(rows=rows, sd_mask_N=context.sd_mask_N.to(device), stats=stats)


class Sdpo(Method[SdpoRows]):
    config_type = SdpoConfig
    uses_self_teacher = True
    description = "SDPO: self-distillation from the EMA self-teacher with a sibling in context (§4)"
    #: name in ``core.composition.QUESTION_WEIGHTINGS`` of the question weight, None for plain SDPO
    weighting: str | None = None

    def question_weights(self, cfg: SdpoConfig, batch: StepBatch, ctx: MethodContext) -> torch.Tensor | None:
        """w_q(i) per row from the registered question weighting, or None for plain SDPO."""
        if self.weighting is None:
            return None
        inputs = QuestionWeightInputs(
            success_N=batch.success_N,
            group_ids_N=batch.group_ids_N,
            example_index_N=batch.example_index_N,
            offline_weights_D=ctx.paced_weights_D,
            alpha=getattr(cfg, "sc_alpha", 0.5),  # only SC-SDPO's config has an exponent
        )
        return question_weights(self.weighting, inputs)

    def needs_old_logp(self, cfg: SdpoConfig) -> bool:
        # On-policy the IS weight is min(exp(0), c) = 1 for any cap c >= 1: the old log-probs are not needed.
        return cfg.is_clip is not None and cfg.is_clip < 1.0

    def hidden_state_loss(self, cfg: SdpoConfig) -> bool:
        return cfg.full_logit  # the sampled-token surrogate reads the teacher's full logits

    def prepare(self, cfg: SdpoConfig, batch: StepBatch, ctx: MethodContext) -> Prepared[SdpoRows]:
        prompts = teacher_prompt_rows(batch, ctx)
        metrics = dict(prompts.stats)
        loss_mask = batch.response_mask_N_T.bool() & prompts.sd_mask_N.unsqueeze(-1)
        weights_N = self.question_weights(cfg, batch, ctx)
        skip = None if bool(loss_mask.any()) else "no rollout has a teacher context (empty target batch)"
        if weights_N is not None:
            metrics.update(weight_stats("weights/question", weights_N, weights_N > 0))
            metrics["weights/question_nonzero_fraction"] = float((weights_N > 0).float().mean())
            if skip is None and not bool((weights_N.unsqueeze(-1) * loss_mask).any()):
                skip = "every question weight of the rows with a teacher context is 0 (§6.3)"
        rows = SdpoRows(prompts.rows, loss_mask, weights_N)
        diagnostics = question_diagnostics(batch, weights_N, prompts.sd_mask_N)
        return Prepared(rows, metrics=metrics, skip_reason=skip, diagnostics=diagnostics)

    def denominators(self, cfg: SdpoConfig, batch, rows: SdpoRows):
        d = aggregation_denominator(rows.loss_mask_N_T, cfg.agg, denominator=cfg.denominator)
        return {"agg": d}

    def loss(self, cfg: SdpoConfig, batch, rows: SdpoRows, denoms, out: StudentOutput, ctx) -> LossOutput:
        """agg(w_q · IS · D, loss mask) (§4.7, §6.2) on the run's forward path (``ctx.forward.distill``).

        Without old log-probs (on-policy, ``needs_old_logp`` False) every IS weight is min(1, c) = 1, so the
        weighting is left out and its metrics are the on-policy values.
        """
        is_clip = cfg.is_clip if batch.old_logp_N_T is not None else None
        weighting = LossWeighting(
            rows.loss_mask_N_T,
            weight_N_T=rows.question_weight_N,
            old_logp_N_T=batch.old_logp_N_T if is_clip is not None else None,
            is_clip=is_clip,
            aggregation=DistillAggregation(cfg.agg, cfg.denominator),
            global_denominator=denoms["agg"],
        )
        teacher_seqs = rows.teacher_prompts.sequences(batch)
        teacher = ctx.forward.self_teacher(ctx.self_teacher, ctx.student, teacher_seqs, ctx.temperature)
        result = ctx.forward.distill(
            out, teacher, weighting, chunk_settings(cfg, ctx), sampled_token=not cfg.full_logit
        )
        metrics = dict(result.metrics)
        if cfg.is_clip is not None and is_clip is None:
            metrics.update({"is_weight_mean": 1.0, "is_clipfrac": float(cfg.is_clip <= 1.0)})
        return LossOutput(loss=result.loss, metrics=metrics)


def question_diagnostics(
    batch: StepBatch, weights_N: torch.Tensor | None, sd_mask_N: torch.Tensor
) -> dict[str, list[float]]:
    """Per question of the step (P lists): its pass rate p_q, its weight w_q (1 for plain SDPO) and the
    fraction of its rows with a teacher context; w_q × that fraction is the question's share of the loss,
    so these show where the weight goes (SC-SDPO's sweet spot at p = 1/2)."""
    rates = question_pass_rates(batch.success_N.cpu(), batch.group_ids_N.cpu())
    w_N = torch.ones(batch.n) if weights_N is None else weights_N.detach().float().cpu()
    return {
        "question/pass_rate": rates.pass_rate_Q.tolist(),
        "question/weight": rates.per_question(w_N).tolist(),
        "question/context_fraction": rates.per_question(sd_mask_N.float().cpu()).tolist(),
    }


def chunk_settings(cfg: SdpoConfig, ctx: MethodContext) -> ChunkSettings:
    return ChunkSettings(
        temperature=ctx.temperature, divergence=DivergenceSpec(cfg.alpha, cfg.top_k, cfg.tail)
    )


def paced_setup(cfg: PacedConfig, ctx: MethodContext) -> None:
    """PACED's frozen per-example weights from the initial policy's offline pass rates, once (§7.3)."""
    if ctx.paced_weights_D is not None:  # restored from a checkpoint: the weights are frozen
        return
    p0_D = ctx.estimate_pass_rates(cfg.offline_samples, cfg.offline_temperature)
    ctx.paced_weights_D = paced_weights(p0_D, a=cfg.kernel_a, b=cfg.kernel_b)


@dataclass(frozen=True)
class SdpoVariant:
    """One question-weighted SDPO method: its name, the question weighting it multiplies the loss by (a name
    in ``core.composition.QUESTION_WEIGHTINGS``), its config section, its one-line description and an
    optional set-up run once before training."""

    name: str
    weighting: str
    config_type: type
    description: str
    min_group_size: int = 2  # pass-rate weightings compare a rollout with its siblings
    setup: Callable[..., None] | None = None  # (cfg, ctx) -> None


class WeightedSdpo(Sdpo):
    """SDPO × w_q(i) (§6.2) for the weighting of one ``SdpoVariant``."""

    def __init__(self, variant: SdpoVariant) -> None:
        self.variant = variant
        self.weighting = variant.weighting
        self.config_type = variant.config_type
        self.description = variant.description
        self.min_group_size = variant.min_group_size

    def setup(self, cfg: SdpoConfig, ctx: MethodContext) -> None:
        if self.variant.setup is not None:
            self.variant.setup(cfg, ctx)


#: The question-weighted SDPO methods. Adding one is one entry here and one function registered in
#: ``core.composition.QUESTION_WEIGHTINGS`` (plus a config class when it has a parameter of its own).
SDPO_VARIANTS = (
    SdpoVariant("sc_sdpo", "pass_rate", ScSdpoConfig,
                "SC-SDPO: SDPO × (p(1−p))^α normalised to mean 1 over informative questions (§6)"),
    SdpoVariant("sdpo_hard_filter", "hard_filter", HardFilterConfig,
                "SDPO with a hard filter: only questions with 0 < p < 1 (§6.4)"),
    SdpoVariant("sdpo_paced", "paced", PacedConfig,
                "SDPO with PACED weights p0(1−p0) from a frozen offline pass (§7.3)",
                min_group_size=1, setup=paced_setup),
)  # fmt: skip


def register(methods: Registry) -> None:
    methods.add("sdpo", Sdpo())
    for variant in SDPO_VARIANTS:
        methods.add(variant.name, WeightedSdpo(variant))
