"""The composition layer: from a step's verified rollouts to each method's per-row weights, in one place.

The trainer (``train/methods/*``) and the verl plugin (``integrations/verl/fields.py``) both call these
functions and hold no formula of their own, so the two cannot drift apart. Each entry composes the primitive
formulas of ``core.weights`` / ``core.groups``:

- success rule: the verifier's ``Verdict.correct`` decides success wherever a verdict exists (training,
  evaluation, PACED's offline pass, the warm start). ``success_from_rewards`` is the rule for callers that
  only see a reward (verl): c_i = 1[r_i ≥ threshold] (docs/algorithms.md §1.4).
- group pass rates p_q = k_q / n_q, one entry per question (§1.5): ``question_pass_rates``.
- question weights of the SDPO family, one registry (``QUESTION_WEIGHTINGS``): SC-SDPO's (p(1−p))^α with mean
  1 over the informative questions (§6.1), the hard filter 1[0 < p < 1] (§6.4), PACED's frozen per-example
  weights (§7.3). Adding a weighting is one function registered here.
- SCOPE's path weights with every ablation switch and the exclusion of rows whose teacher scores never
  arrived (§5.4, §5.6, §5.7): ``scope_path_weights``; the factor that turns one token-mean into SCOPE's two
  (§5.5): ``scope_mle_scale``.
- SRPO's entropy weights over the SDPO-routed tokens (§7.4): ``srpo_entropy_weights`` (the routing itself is
  ``core.weights.srpo_routing``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opdkit.core.groups import group_index, group_mean, sequence_mean
from opdkit.core.registry import Registry
from opdkit.core.weights import (
    SCOPE_SIGN_PRESETS,
    ScopeWeights,
    entropy_weights,
    hard_filter_weights,
    pass_rate_weights,
    scope_weights,
)

# ---------------------------------------------------------------------------------------- success rule

#: c_i = 1[r_i ≥ 0.5] where only a reward exists (§1.4, §11 A13).
REWARD_SUCCESS_THRESHOLD = 0.5


def success_from_rewards(
    rewards_N: torch.Tensor, *, threshold: float = REWARD_SUCCESS_THRESHOLD
) -> torch.Tensor:
    """c_i = 1[r_i ≥ threshold] -> (N,) bool (§1.4).

    Only for callers that see a reward and no verdict: verl hands its trainer the summed ``rm_scores``, not
    the verifier's ``Verdict``. opdkit's own trainer, evaluation, PACED's offline pass and the warm start take
    ``Verdict.correct``; every verifier of the papers scores 1.0 exactly when ``correct``, so with binary
    rewards the two rules agree, and for continuous rewards the threshold is the documented choice (§11 A13).
    """
    return rewards_N.to(torch.float32) >= threshold


# ----------------------------------------------------------------------------------------- pass rates


@dataclass(frozen=True)
class PassRates:
    """The step's questions (groups) and their pass rates.

    pass_rate_Q: (Q,) float32, p_q = k_q / n_q, one entry per question in increasing group-id order (so a
    mean over questions is not a mean over rollouts, §6.1). question_N: (N,) int64 dense question index of
    each row.
    """

    pass_rate_Q: torch.Tensor
    question_N: torch.Tensor

    def per_row(self) -> torch.Tensor:
        """Each row's question pass rate -> (N,) float32."""
        return self.pass_rate_Q[self.question_N]

    def per_question(self, x_N: torch.Tensor) -> torch.Tensor:
        """Mean of a per-row value over each question's rows -> (Q,) (the value itself when constant)."""
        out_Q = torch.zeros_like(self.pass_rate_Q, dtype=x_N.dtype).index_add(0, self.question_N, x_N)
        sizes_Q = torch.bincount(self.question_N, minlength=self.pass_rate_Q.numel()).to(x_N.dtype)
        return out_Q / sizes_Q.clamp(min=1)

    @property
    def informative_Q(self) -> torch.Tensor:
        """0 < p_q < 1 -> (Q,) bool: the questions that carry a learning signal (§1.5)."""
        return (self.pass_rate_Q > 0) & (self.pass_rate_Q < 1)


def question_pass_rates(success_N: torch.Tensor, group_ids_N: torch.Tensor) -> PassRates:
    """p_q = k_q / n_q for every question of the step (§1.5); ``success_N`` bool or 0/1, any group order."""
    idx = group_index(group_ids_N)
    return PassRates(group_mean(success_N.to(torch.float32), idx), idx.inverse_N)


# ----------------------------------------------------------------------------------- question weights


@dataclass(frozen=True)
class QuestionWeightInputs:
    """What a question weighting may read.

    success_N: (N,) bool; group_ids_N: (N,) int64. example_index_N: (N,) int64 dataset row of each rollout
    and offline_weights_D: (D,) frozen per-example weights (PACED), else None. alpha: SC-SDPO's exponent α.
    """

    success_N: torch.Tensor
    group_ids_N: torch.Tensor
    example_index_N: torch.Tensor | None = None
    offline_weights_D: torch.Tensor | None = None
    alpha: float = 0.5


QuestionWeighting = Callable[[QuestionWeightInputs], torch.Tensor]

#: name -> f(inputs) -> (N,) float32 question weight w_q(i) of each row (the SDPO family's weightings).
QUESTION_WEIGHTINGS: Registry[QuestionWeighting] = Registry("question weighting")


@QUESTION_WEIGHTINGS.register("pass_rate")
def sc_question_weights(inputs: QuestionWeightInputs) -> torch.Tensor:
    """SC-SDPO (§6.1): (p_q(1−p_q))^α normalised to mean 1 over the step's informative QUESTIONS -> (N,)."""
    rates = question_pass_rates(inputs.success_N, inputs.group_ids_N)
    return pass_rate_weights(rates.pass_rate_Q, alpha=inputs.alpha)[rates.question_N]


@QUESTION_WEIGHTINGS.register("hard_filter")
def hard_filter_question_weights(inputs: QuestionWeightInputs) -> torch.Tensor:
    """Hard filter (§6.4): 1[0 < p_q < 1] for each row's question -> (N,)."""
    rates = question_pass_rates(inputs.success_N, inputs.group_ids_N)
    return hard_filter_weights(rates.pass_rate_Q)[rates.question_N]


@QUESTION_WEIGHTINGS.register("paced")
def paced_question_weights(inputs: QuestionWeightInputs) -> torch.Tensor:
    """PACED (§7.3): the frozen weight of each row's example (``core.weights.paced_weights``) -> (N,)."""
    if inputs.offline_weights_D is None or inputs.example_index_N is None:
        raise ValueError("the paced weighting needs offline_weights_D and example_index_N")
    index_N = inputs.example_index_N
    return inputs.offline_weights_D.to(index_N.device)[index_N]


def question_weights(name: str, inputs: QuestionWeightInputs) -> torch.Tensor:
    """The registered question weighting ``name`` -> (N,); an unknown name lists the valid ones."""
    return QUESTION_WEIGHTINGS.get(name)(inputs)


# --------------------------------------------------------------------------------------- SCOPE paths


def scope_exponents(
    sign_preset: str = "paper", student_exponent: float | None = None, teacher_exponent: float | None = None
) -> tuple[float, float]:
    """(student, teacher) exponents: the sign preset's (§5.6, §11 A1), each overridden when given."""
    if sign_preset not in SCOPE_SIGN_PRESETS:
        raise ValueError(f"unknown scope sign_preset {sign_preset!r}; valid: {', '.join(SCOPE_SIGN_PRESETS)}")
    student, teacher = SCOPE_SIGN_PRESETS[sign_preset]
    return (
        student if student_exponent is None else student_exponent,
        teacher if teacher_exponent is None else teacher_exponent,
    )


@dataclass(frozen=True)
class ScopeSwitches:
    """SCOPE's weighting parameters and ablation switches (§5.4, §5.6).

    tau: softmax temperature τ. student_exponent / teacher_exponent: w ∝ PPL^(exponent/τ)
    (``scope_exponents``). normalization: ``mean1`` (softmax × path size) or ``sum1``. dual_path False:
    plain OPD, weight 1 on every scored row, no MLE path. use_seq_weights False: weight 1 on both paths.
    use_student_weights / use_teacher_weights False: weight 1 on that path only.
    """

    tau: float = 1.0
    student_exponent: float = 1.0
    teacher_exponent: float = -1.0
    normalization: str = "mean1"
    dual_path: bool = True
    use_seq_weights: bool = True
    use_student_weights: bool = True
    use_teacher_weights: bool = True


@dataclass(frozen=True)
class ScopePaths:
    """SCOPE's routing and weights per row: ``weights`` (student path on ``correct_N``, teacher path on the
    scored wrong rows, 0 elsewhere), ``correct_N`` (bool, the MLE path's rows; none without the dual path) and
    ``valid_N`` (bool, the rows whose teacher scores arrived)."""

    weights: ScopeWeights
    correct_N: torch.Tensor
    valid_N: torch.Tensor


def rows_with_teacher_scores(teacher_logp_N_T: torch.Tensor, mask_N_T: torch.Tensor) -> torch.Tensor:
    """Rows whose teacher log-probs are finite on every valid token -> (N,) bool.

    A row whose scores never arrived holds NaN (the trainer's teachers mark them so, §5.7); for callers that
    get no explicit valid flag (verl) this is how such rows are recognised.
    """
    finite_N_T = torch.isfinite(teacher_logp_N_T) | ~mask_N_T.to(torch.bool)
    return finite_N_T.all(dim=-1)


def scope_path_weights(
    old_logp_N_T: torch.Tensor,
    teacher_logp_N_T: torch.Tensor,
    mask_N_T: torch.Tensor,
    success_N: torch.Tensor,
    group_ids_N: torch.Tensor,
    *,
    valid_N: torch.Tensor | None = None,
    switches: ScopeSwitches = ScopeSwitches(),
) -> ScopePaths:
    """SCOPE's per-row path weights with the ablation switches applied (§5.3-§5.7).

    old_logp_N_T: the pre-update student's log-probs (ℓS = their masked mean, §5.3); teacher_logp_N_T: the
    teacher's on the sampled tokens (ℓT), NaN allowed on unscored rows. ``valid_N`` (bool) marks the rows
    whose teacher scores arrived (default ``rows_with_teacher_scores``): an unscored wrong row is out of the
    teacher softmax and gets weight 0 under every switch (§5.7), so it never counts as a perfect teacher.
    """
    correct_N = success_N.to(torch.bool)
    if valid_N is None:
        valid_N = rows_with_teacher_scores(teacher_logp_N_T, mask_N_T)
    valid_N = valid_N.to(torch.bool)
    wrong_scored_N = (~correct_N & valid_N).to(torch.float32)
    if not switches.dual_path:  # plain OPD: weight 1 on every scored row, no MLE path
        none_N = torch.zeros_like(correct_N)
        teacher_N = valid_N.to(torch.float32)
        weights = ScopeWeights(student_N=torch.zeros_like(wrong_scored_N), teacher_N=teacher_N)
        return ScopePaths(weights, correct_N=none_N, valid_N=valid_N)
    w = scope_weights(
        sequence_mean(old_logp_N_T.to(torch.float32), mask_N_T),  # ℓS: pre-update student, §5.3
        sequence_mean(teacher_logp_N_T.to(torch.float32), mask_N_T),  # ℓT (NaN rows are masked out below)
        correct_N, group_ids_N,
        tau=switches.tau, student_exponent=switches.student_exponent,
        teacher_exponent=switches.teacher_exponent, normalization=switches.normalization, valid_N=valid_N,
    )  # fmt: skip
    use_student = switches.use_seq_weights and switches.use_student_weights
    use_teacher = switches.use_seq_weights and switches.use_teacher_weights
    weights = ScopeWeights(
        student_N=w.student_N if use_student else correct_N.to(torch.float32),
        teacher_N=w.teacher_N if use_teacher else wrong_scored_N,
    )
    return ScopePaths(weights, correct_N=correct_N, valid_N=valid_N)


def scope_mle_scale(mask_N_T: torch.Tensor, correct_N: torch.Tensor, agg: str) -> float:
    """Factor on the correct rows' per-token MLE loss so that ONE token-mean over all valid tokens equals
    SCOPE's L_PG + L_MLE (§5.5).

    "code": L_MLE divides by the correct rows' token count C, a single token-mean by all tokens A, so the
    factor is A / C (1 when C = 0: the term is empty anyway). "joint": one token-mean already, factor 1.
    Counts are the step batch's; they are exact for the update when the PPO mini-batch is the step batch
    (SCOPE's setting, §10.4) and the step's ratio otherwise.
    """
    if agg == "joint":
        return 1.0
    mask = mask_N_T.to(torch.bool)
    all_tokens = float(mask.sum())
    correct_tokens = float((mask & correct_N.to(torch.bool).unsqueeze(-1)).sum())
    return all_tokens / correct_tokens if correct_tokens > 0 else 1.0


# ------------------------------------------------------------------------------------------------ SRPO


def srpo_entropy_weights(
    entropy_N_T: torch.Tensor, mask_N_T: torch.Tensor, sdpo_N: torch.Tensor, *, beta: float = 1.0
) -> torch.Tensor:
    """SRPO's token weights exp(−βH) normalised to mean 1 over the SDPO-routed valid tokens (§7.4) -> (N, T).

    ``sdpo_N``: the rows routed to the SDPO branch (``core.weights.srpo_routing``); 0 on every other token.
    """
    routed_N_T = mask_N_T.to(torch.bool) & sdpo_N.to(torch.bool).unsqueeze(-1)
    return entropy_weights(entropy_N_T, routed_N_T, beta=beta)
