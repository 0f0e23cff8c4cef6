"""The opdkit trainer and the verl plugin compute the same weights from the same step batch.

One real step batch (the tiny student's rollouts with chosen verdicts, its old log-probs, the tiny teacher's
log-probs with some rows never scored) goes through the trainer's ``method.prepare`` and through the verl
plugin's driver-side ``step_weights``; the per-row weights must be equal. Both sides call
``opdkit.core.composition``; this test is what keeps a second copy of a formula from creeping back in (before
the composition layer, the plugin gave an unscored wrong row SCOPE's largest teacher weight).

``integrations.verl.fields`` imports only torch and opdkit.core, so this runs without verl installed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from opdkit.integrations.verl import params as vp
from opdkit.integrations.verl.fields import DriverBatch, step_weights
from opdkit.train.methods import METHODS

# 4 questions x 4 rollouts (the fixture's batch) with pass rates 0.5, 0.25, 0 and 0.75.
SUCCESSES = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1]
# Rows whose teacher scores never arrive: a wrong row in a group with other scored wrong rows (1), the only
# wrong row of its group (14), a correct row (12) and one in the all-wrong group (9).
UNSCORED = [1, 9, 12, 14]


class DroppingTeacher:
    """The real tiny teacher, except that the rows in ``UNSCORED`` come back unscored (NaN, valid False), as
    a teacher server's failed rows do after their retries."""

    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def score(self, *args, **kwargs):
        scores = self.teacher.score(*args, **kwargs)
        lost = torch.zeros_like(scores.valid_N, dtype=torch.bool)
        lost[UNSCORED] = True
        logp = torch.where(
            lost.unsqueeze(-1), torch.full_like(scores.logp_N_T, float("nan")), scores.logp_N_T
        )
        return dataclasses.replace(scores, logp_N_T=logp, valid_N=scores.valid_N & ~lost)


def _rows(prepared) -> dict[str, torch.Tensor]:
    """The per-row tensors of the trainer's hand-off from ``prepare`` to ``loss``."""
    return {f.name: getattr(prepared.rows, f.name) for f in dataclasses.fields(prepared.rows)}


def _driver_batch(batch, teacher_logp_N_T=None) -> DriverBatch:
    return DriverBatch(
        rewards_N=batch.rewards_N,
        group_ids_N=batch.group_ids_N,
        mask_N_T=batch.response_mask_N_T,
        old_logp_N_T=batch.old_logp_N_T,
        teacher_logp_N_T=teacher_logp_N_T,
    )


# (trainer overrides, the same setting as algorithm.opdkit keys)
SCOPE_SETTINGS = [
    ([], {}),
    (["method.tau=0.5", "method.normalization=sum1"], {"scope_tau": 0.5, "scope_normalization": "sum1"}),
    (["method.sign_preset=released_scripts", "method.tau=2.0"],
     {"scope_student_exponent": -1.0, "scope_teacher_exponent": -1.0, "scope_tau": 2.0}),
    (["method.use_student_weights=false"], {"scope_use_student_weights": False}),
    (["method.use_teacher_weights=false"], {"scope_use_teacher_weights": False}),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "keys"), SCOPE_SETTINGS, ids=lambda x: str(x))
def test_scope_weights_are_equal_with_unscored_rows(step_setup, extra, keys):
    cfg, batch, ctx = step_setup("scope", SUCCESSES, extra=extra)
    ctx.teacher = DroppingTeacher(ctx.teacher)
    rows = _rows(METHODS.get("scope").prepare(cfg, batch, ctx))

    teacher_logp = ctx.teacher.score(
        batch.unpadded_prompts(), batch.unpadded_responses(), pad_to=batch.response_ids_N_T.shape[1]
    ).logp_N_T
    plugin = step_weights(_driver_batch(batch, teacher_logp), vp.parse_params({"weighting": "scope", **keys}))
    fields = plugin.fields_N

    torch.testing.assert_close(fields[vp.FIELD_W_STUDENT], rows["w_student_N"].float())
    torch.testing.assert_close(fields[vp.FIELD_W_TEACHER], rows["w_teacher_N"].float())
    torch.testing.assert_close(fields[vp.FIELD_CORRECT], rows["correct_N"].float())
    # the unscored wrong rows are on no path on either side (§5.7); the correct row 12 keeps its MLE weight
    unscored_wrong = [i for i in UNSCORED if not SUCCESSES[i]]
    assert fields[vp.FIELD_W_TEACHER][unscored_wrong].tolist() == [0.0] * len(unscored_wrong)
    assert fields[vp.FIELD_W_STUDENT][12] > 0
    assert bool((rows["w_teacher_N"] > 0).any()) and bool((rows["w_student_N"] > 0).any()), "vacuous case"


@pytest.mark.parametrize(
    ("method", "extra", "keys"),
    [
        ("sc_sdpo", ["method.sc_alpha=0.5"], {"weighting": "pass_rate", "sc_alpha": 0.5}),
        ("sc_sdpo", ["method.sc_alpha=1.0"], {"weighting": "pass_rate", "sc_alpha": 1.0}),
        ("sdpo_hard_filter", [], {"weighting": "hard_filter"}),
    ],
)
def test_question_weights_are_equal(step_setup, method, extra, keys):
    cfg, batch, ctx = step_setup(method, SUCCESSES, extra=extra)
    trainer_w = _rows(METHODS.get(method).prepare(cfg, batch, ctx))["question_weight_N"]
    plugin_w = step_weights(_driver_batch(batch), vp.parse_params(keys)).fields_N[vp.FIELD_Q_WEIGHT]
    torch.testing.assert_close(plugin_w, trainer_w.float())
    assert trainer_w.min() == 0 < trainer_w.max(), "a degenerate and an informative question, else weak"


def test_plugin_leaves_rows_without_teacher_scores_out_of_scope_weights():
    # One group: wrong rows with ℓT = −0.5, −2.0, a wrong row whose scores never arrived (NaN) and a correct
    # row. Paper signs, τ = 1, mean1 over the two SCORED wrong rows: 2·softmax(−0.5, −2.0) =
    # (2/(1+e^−1.5), 2e^−1.5/(1+e^−1.5)) = (1.6351, 0.3649); the unscored row 0. (Before the composition
    # layer the plugin returned NaN for the whole group, or, zero-filled, 1.72 for the unscored row.)
    nan = float("nan")
    teacher = torch.tensor([[-0.5, -0.5], [-2.0, -2.0], [nan, nan], [-1.0, -1.0]])
    step = DriverBatch(
        rewards_N=torch.tensor([0.0, 0.0, 0.0, 1.0]),
        group_ids_N=torch.zeros(4, dtype=torch.int64),
        mask_N_T=torch.ones(4, 2, dtype=torch.bool),
        old_logp_N_T=torch.full((4, 2), -1.0),
        teacher_logp_N_T=teacher,
    )
    e = torch.tensor(-1.5).exp()
    expected = torch.tensor([2 / (1 + e), 2 * e / (1 + e), 0.0, 0.0])
    params = vp.parse_params({"weighting": "scope"})
    torch.testing.assert_close(step_weights(step, params).fields_N[vp.FIELD_W_TEACHER], expected)
    # an explicit flag does the same for a row whose placeholder scores are finite (here zeros)
    flagged = dataclasses.replace(
        step,
        teacher_logp_N_T=torch.nan_to_num(teacher),
        teacher_valid_N=torch.tensor([True, True, False, True]),
    )
    torch.testing.assert_close(step_weights(flagged, params).fields_N[vp.FIELD_W_TEACHER], expected)
