"""SCOPE (arXiv 2604.10688): correctness-routed, perplexity-weighted on-policy distillation.

§5. Per group, correct rollouts get MLE weighted by the student's perplexity, wrong rollouts
get OPD weighted by the teacher's perplexity; weights are softmaxes over each path of each group with
temperature τ (``core.weights.scope_weights``), combined by ``core.objectives.scope_loss``.

Ablations and presets are parameters:
- ``sign_preset``: ``paper`` (w_stu ∝ PPL_S^{+1/τ}, w_tea ∝ PPL_T^{−1/τ}) or ``released_scripts`` (the
  released scripts' inverted student path, §11 A1); ``student_exponent``/``teacher_exponent`` override it
  (e.g. the "reversed signs" ablation).
- ``use_seq_weights=False``: unweighted dual path (MLE on correct, OPD on wrong, weight 1).
- ``use_student_weights=False`` / ``use_teacher_weights=False``: weight 1 on that path only.
- ``dual_path=False``: plain OPD on every rollout (the OPD baseline of SCOPE's stack).
- ``loss_averaging``: ``minibatch`` (default) takes the PG and MLE token means over the whole mini-batch, as
  the paper's one expectation per path reads; ``microbatch`` reproduces the released code, whose dynamic
  batches of ``micro_batch_tokens`` (16,384) tokens take both means per micro-batch, each scaled by its share
  of the rows (``core.microbatch``; computed over the step batch, which is the mini-batch of SCOPE's
  on-policy setting). With 1k-12k-token responses the released averaging gives MLE about 0.24 / 0.59 / 0.82
  / 0.98 of opdkit's weight relative to PG at 10 / 30 / 50 / 80 % correct rollouts
  (``benchmarks/scope_microbatch_weights.py``): it starves the MLE path when few rollouts are correct.
Example::

    opdkit train configs/scope.yaml method.tau=2.0 method.use_student_weights=false
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from opdkit.core.composition import ScopePaths, ScopeSwitches, scope_exponents, scope_path_weights
from opdkit.core.groups import sequence_mean
from opdkit.core.microbatch import balanced_micro_batches, micro_batch_scales
from opdkit.core.objectives import ClipConfig, ScopeDenominators, ScopeInputs, scope_denominators, scope_loss
from opdkit.core.registry import Registry
from opdkit.core.weights import ScopeWeights
from opdkit.train.batch import Prepared, Rows, StepBatch
from opdkit.train.configio import doc
from opdkit.train.methods.base import Method, MethodConfig, MethodContext, weight_stats
from opdkit.train.methods.policy import TeacherResult, score_with_teacher, teacher_metrics
from opdkit.train.student import StudentOutput


def _f(default, help: str, **bounds: float):
    return doc(default, help, **bounds)  # bounds: ge/gt/le/lt, checked when the config is loaded


@dataclass(frozen=True)
class ScopeConfig(MethodConfig):
    name: str = _f("scope", "the method")
    tau: float = _f(1.0, "softmax temperature τ of both paths", gt=0)
    sign_preset: str = _f("paper", "exponent signs: 'paper' or 'released_scripts' (§5.6, §11 A1)")
    student_exponent: float | None = _f(None, "override: correct-path weight ∝ PPL_S^(e/τ)")
    teacher_exponent: float | None = _f(None, "override: wrong-path weight ∝ PPL_T^(e/τ)")
    normalization: str = _f("mean1", "'mean1' (code: mean 1 per path and group) or 'sum1' (paper)")
    agg: str = _f("code", "'code' (PG token-mean over all tokens + MLE token-mean over correct) or 'joint'")
    use_seq_weights: bool = _f(True, "False: unweighted dual path")
    use_student_weights: bool = _f(True, "False: weight 1 on correct rollouts")
    use_teacher_weights: bool = _f(True, "False: weight 1 on wrong rollouts")
    dual_path: bool = _f(True, "False: plain OPD on every rollout, no MLE path")
    clip_low: float = _f(0.2, "PPO lower clip", ge=0)
    clip_high: float = _f(0.2, "PPO upper clip (SCOPE uses verl's 0.2)", ge=0)
    dual_clip: float | None = _f(3.0, "dual-clip constant (None = off)")
    loss_averaging: str = _f(
        "minibatch", "'minibatch' (token means over the mini-batch) or 'microbatch' (the released code's "
        "per-micro-batch means scaled by the micro-batch's share of rows)"
    )  # fmt: skip
    micro_batch_tokens: int = _f(
        16384, "loss_averaging=microbatch: token budget (prompt + response) of a micro-batch"
    )

    def __post_init__(self) -> None:
        if self.loss_averaging not in LOSS_AVERAGING:
            raise ValueError(
                f"unknown method.loss_averaging {self.loss_averaging!r}; valid: {', '.join(LOSS_AVERAGING)}"
            )
        scope_exponents(self.sign_preset)  # rejects an unknown preset, listing the valid ones

    def exponents(self) -> tuple[float, float]:
        return scope_exponents(self.sign_preset, self.student_exponent, self.teacher_exponent)

    def switches(self) -> ScopeSwitches:
        """The weighting parameters and ablation switches as ``core.composition`` takes them."""
        student_exp, teacher_exp = self.exponents()
        return ScopeSwitches(
            tau=self.tau, student_exponent=student_exp, teacher_exponent=teacher_exp,
            normalization=self.normalization, dual_path=self.dual_path, use_seq_weights=self.use_seq_weights,
            use_student_weights=self.use_student_weights, use_teacher_weights=self.use_teacher_weights,
        )  # fmt: skip


LOSS_AVERAGING = ("minibatch", "microbatch")


def _micro_batch_factors(
    cfg: ScopeConfig, batch: StepBatch, correct_N: torch.Tensor, valid_N: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-row factors (PG path, MLE path) that turn the global token means into the released code's
    per-micro-batch means (``core.microbatch``), and the number of micro-batches."""
    lengths = (batch.prompt_mask_N_P.sum(-1) + batch.response_mask_N_T.sum(-1)).tolist()
    parts = balanced_micro_batches([int(n) for n in lengths], cfg.micro_batch_tokens)
    mask = batch.response_mask_N_T.bool()
    correct = correct_N.to(torch.bool)
    pg_mask = mask & (correct | valid_N).unsqueeze(-1)  # the PG mean's tokens (scope_masks)
    pg_N = micro_batch_scales(parts, pg_mask)
    mle_N = micro_batch_scales(parts, mask & correct.unsqueeze(-1)) if cfg.agg == "code" else pg_N
    return pg_N, mle_N, len(parts)


def _weights(
    cfg: ScopeConfig, batch: StepBatch, teacher_logp: torch.Tensor, valid_N: torch.Tensor
) -> ScopePaths:
    """SCOPE's routing and path weights with the ablation switches applied (``core.composition``, §5.6)."""
    return scope_path_weights(
        batch.old_logp_N_T, teacher_logp, batch.response_mask_N_T, batch.success_N, batch.group_ids_N,
        valid_N=valid_N, switches=cfg.switches(),
    )  # fmt: skip


def _row_diagnostics(
    batch: StepBatch, teacher: TeacherResult, correct_N: torch.Tensor, w: ScopeWeights
) -> dict[str, list[float]]:
    """Per row (N lists): correct, PPL_S = exp(−ℓS), PPL_T = exp(−ℓT) and both path weights, for the plot
    of each path's weight against the perplexity that sets it; ``row/teacher_flag`` when the teacher tags
    rows (e.g. the unreliable teacher's corrupted questions)."""
    mask = batch.response_mask_N_T
    old = batch.old_logp_N_T if batch.old_logp_N_T is not None else torch.zeros_like(teacher.logp_N_T)
    out = {
        "row/correct": correct_N.float().cpu().tolist(),
        "row/ppl_student": torch.exp(-sequence_mean(old, mask)).cpu().tolist(),
        "row/ppl_teacher": torch.exp(-sequence_mean(teacher.logp_N_T, mask)).cpu().tolist(),
        "row/w_student": w.student_N.float().cpu().tolist(),
        "row/w_teacher": w.teacher_N.float().cpu().tolist(),
    }
    if teacher.row_flags_N is not None:
        out["row/teacher_flag"] = teacher.row_flags_N.float().cpu().tolist()
    return out


@dataclass(frozen=True)
class ScopeRows(Rows):
    """SCOPE's hand-off: the teacher's log-probs (N, T) (NaN on rows without scores) and which rows have them
    (N,), the routing to the MLE path (N,) and the two path weights (N,) (§5.4; with
    ``loss_averaging: microbatch`` already scaled by the released code's micro-batch factors)."""

    teacher_logp_N_T: torch.Tensor
    teacher_valid_N: torch.Tensor
    correct_N: torch.Tensor
    w_student_N: torch.Tensor
    w_teacher_N: torch.Tensor


class Scope(Method[ScopeRows]):
    config_type = ScopeConfig
    min_group_size = 2
    uses_teacher = True
    description = "SCOPE: correct -> PPL_S-weighted MLE, wrong -> PPL_T-weighted OPD (§5)"

    def prepare(self, cfg: ScopeConfig, batch: StepBatch, ctx: MethodContext) -> Prepared[ScopeRows]:
        teacher = score_with_teacher(batch, ctx)
        paths = _weights(cfg, batch, teacher.logp_N_T, teacher.valid_N)
        w, correct = paths.weights, paths.correct_N
        rows = ScopeRows(teacher.logp_N_T, teacher.valid_N, correct, w.student_N, w.teacher_N)
        mask = batch.response_mask_N_T.bool() & teacher.valid_N.unsqueeze(-1)
        metrics = {}
        if cfg.loss_averaging == "microbatch":
            pg_N, mle_N, count = _micro_batch_factors(cfg, batch, correct, teacher.valid_N)
            rows = dataclasses.replace(rows, w_teacher_N=w.teacher_N * pg_N, w_student_N=w.student_N * mle_N)
            metrics["scope/micro_batches"] = float(count)
        metrics = {
            **metrics,
            **teacher.stats,
            **teacher_metrics(batch, teacher, mask),
            "scope/correct_fraction": float(correct.float().mean()),
            **weight_stats("weights/scope_student", w.student_N, correct),
            **weight_stats("weights/scope_teacher", w.teacher_N, ~correct & teacher.valid_N),
        }
        return Prepared(rows=rows, metrics=metrics, diagnostics=_row_diagnostics(batch, teacher, correct, w))

    @staticmethod
    def _inputs(batch: StepBatch, rows: ScopeRows, logp_N_T: torch.Tensor) -> ScopeInputs:
        return ScopeInputs(
            logp_N_T=logp_N_T,
            old_logp_N_T=batch.old_logp_N_T,
            teacher_logp_N_T=rows.teacher_logp_N_T,
            mask_N_T=batch.response_mask_N_T,
            correct_N=rows.correct_N,
            teacher_valid_N=rows.teacher_valid_N,
        )

    def denominators(self, cfg, batch, rows: ScopeRows):
        d = scope_denominators(self._inputs(batch, rows, batch.old_logp_N_T))
        return {"pg": d.pg, "mle": d.mle}

    def loss(self, cfg: ScopeConfig, batch, rows: ScopeRows, denoms, out: StudentOutput, ctx):
        weights = ScopeWeights(rows.w_student_N, rows.w_teacher_N)
        return scope_loss(
            self._inputs(batch, rows, out.logp_N_T),
            weights,
            clip=ClipConfig(cfg.clip_low, cfg.clip_high, cfg.dual_clip),
            agg=cfg.agg,
            denominators=ScopeDenominators(pg=denoms["pg"], mle=denoms["mle"]),
        )


def register(methods: Registry) -> None:
    methods.add("scope", Scope())
