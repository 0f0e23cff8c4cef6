"""Driver-side weights of the opdkit_sync trainer (opdkit.integrations.verl.fields) and the parameter node;
pure torch, so these run with or without verl. Expected values are derived by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from opdkit.integrations.verl import params as vp
from opdkit.integrations.verl.fields import (
    DriverBatch,
    group_ids_from_uids,
    pass_rate_step_weights,
    scope_mle_scale,
    scope_step_weights,
    step_weights,
)


def test_group_ids_number_uids_by_first_appearance() -> None:
    assert group_ids_from_uids(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]


def _mask(lengths: list[int], width: int = 4) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(-1)


def test_pass_rate_weights_are_normalised_over_the_questions_of_the_step() -> None:
    # q "x": 1 of 4 correct (p = 1/4), q "y": 2 of 4 (p = 1/2), q "z": 0 of 2 (degenerate). α = 0.5:
    # u_x = sqrt(3/16) = 0.4330127, u_y = 0.5; mean over the informative questions 0.4665064 (per QUESTION,
    # not per rollout), so w_x = 0.9282032, w_y = 1.0717968, w_z = 0.
    uids = ["x"] * 4 + ["y"] * 4 + ["z"] * 2
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 0, 0])
    step = DriverBatch(rewards_N=rewards, group_ids_N=group_ids_from_uids(uids), mask_N_T=_mask([2] * 10))
    out = pass_rate_step_weights(step, vp.OpdkitVerlParams(weighting="pass_rate"))
    expected = [0.9282032] * 4 + [1.0717968] * 4 + [0.0] * 2
    torch.testing.assert_close(out.fields_N[vp.FIELD_Q_WEIGHT], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert out.metrics["opdkit/informative_question_fraction"] == pytest.approx(2 / 3)
    assert out.metrics["opdkit/empty_batch"] == 0.0


def test_hard_filter_and_an_all_degenerate_batch() -> None:
    step = DriverBatch(
        rewards_N=torch.tensor([1.0, 1.0, 0.0, 0.0]),  # p = 1 and p = 0: nothing informative
        group_ids_N=torch.tensor([0, 0, 1, 1]),
        mask_N_T=_mask([1, 2, 3, 4]),
    )
    out = step_weights(step, vp.OpdkitVerlParams(weighting="hard_filter"))
    assert out.fields_N[vp.FIELD_Q_WEIGHT].tolist() == [0.0] * 4
    assert out.metrics["opdkit/empty_batch"] == 1.0


def test_success_threshold_applies_to_continuous_rewards() -> None:
    step = DriverBatch(torch.tensor([0.7, 0.2]), torch.tensor([0, 0]), _mask([1, 1]))  # one success at 0.5
    w = pass_rate_step_weights(step, vp.OpdkitVerlParams(success_threshold=0.5)).fields_N[vp.FIELD_Q_WEIGHT]
    assert w.tolist() == [1.0, 1.0]  # one informative question: weight 1 (mean-1 normalisation)


def test_scope_mle_scale_turns_one_token_mean_into_two() -> None:
    # tokens: rows of lengths 3, 2 (correct) and 4, 3 (wrong): all = 12, correct = 5 -> code scale 12/5
    mask, correct = _mask([3, 2, 4, 3]), torch.tensor([True, True, False, False])
    assert scope_mle_scale(mask, correct, "code") == pytest.approx(2.4)
    assert scope_mle_scale(mask, correct, "joint") == 1.0
    assert scope_mle_scale(mask, torch.zeros(4, dtype=torch.bool), "code") == 1.0  # no MLE term at all


def test_scope_weights_use_masked_mean_log_probs_of_whole_groups() -> None:
    # Group 0: two correct rows whose mean old log-probs over their VALID tokens are -0.1 and -1.0 (the
    # padding holds -50 and must not count), plus one wrong row. Paper signs (student exponent +1, τ = 1):
    # w_stu = 2·softmax(+0.1, +1.0) = (0.58, 1.42): the less confident correct row weighs more (§5.4, §5.6).
    # The wrong row is alone on its path: w_tea = 1.0. Group 1 (all wrong) gets teacher weights only.
    old = torch.tensor(
        [
            [-0.1, -0.1, -50.0, -50.0],
            [-1.0, -1.0, -1.0, -50.0],
            [-0.5, -50, -50, -50],
            [-0.2, -0.2, -0.2, -0.2],
        ]
    )
    teacher = torch.tensor([[-3.0] * 4, [-3.0] * 4, [-0.7] * 4, [-0.4] * 4])
    step = DriverBatch(
        rewards_N=torch.tensor([1.0, 1.0, 0.0, 0.0]),
        group_ids_N=torch.tensor([0, 0, 0, 1]),
        mask_N_T=_mask([2, 3, 1, 4]),
        old_logp_N_T=old,
        teacher_logp_N_T=teacher,
    )
    out = scope_step_weights(step, vp.OpdkitVerlParams(weighting="scope"))
    e = math.exp(0.9)  # softmax(0.1, 1.0) = (1, e^0.9) / (1 + e^0.9)
    expected_student = [2 / (1 + e), 2 * e / (1 + e), 0.0, 0.0]
    torch.testing.assert_close(out.fields_N[vp.FIELD_W_STUDENT], torch.tensor(expected_student))
    assert out.fields_N[vp.FIELD_W_TEACHER].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out.fields_N[vp.FIELD_CORRECT].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert out.fields_N[vp.FIELD_MLE_SCALE].tolist() == [2.0] * 4  # 10 tokens, 5 of them on correct rows


def test_scope_without_teacher_log_probs_is_an_error() -> None:
    step = DriverBatch(torch.tensor([1.0]), torch.tensor([0]), _mask([1]), old_logp_N_T=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="teacher_logprobs"):
        scope_step_weights(step, vp.OpdkitVerlParams(weighting="scope"))


def test_params_node_parses_command_line_strings_and_rejects_unknown_keys() -> None:
    parsed = vp.parse_params({"weighting": "scope", "scope_tau": "0.5", "sc_alpha": 1})
    assert (parsed.weighting, parsed.scope_tau, parsed.sc_alpha) == ("scope", 0.5, 1.0)
    assert vp.parse_params(None) == vp.OpdkitVerlParams()
    with pytest.raises(KeyError, match=r"algorithm\.opdkit\.tau; valid: weighting"):
        vp.parse_params({"tau": 1.0})
    with pytest.raises(ValueError, match=r"algorithm\.opdkit\.weighting: unknown value 'sdpo'"):
        vp.parse_params({"weighting": "sdpo"})
    with pytest.raises(ValueError, match=r"scope_tau: expected a float"):
        vp.parse_params({"scope_tau": "hot"})


def test_scope_ablations_set_path_weights_to_one() -> None:
    # §5.6: use_student_weights=false -> w = 1 on each correct row; use_teacher_weights=false -> 1 on wrong.
    old = torch.tensor([[-0.1, -0.1], [-1.0, -1.0], [-0.5, -0.5], [-0.2, -0.2]])
    step = DriverBatch(
        rewards_N=torch.tensor([1.0, 1.0, 0.0, 0.0]),
        group_ids_N=torch.tensor([0, 0, 0, 0]),
        mask_N_T=_mask([2, 2, 2, 2], width=2),
        old_logp_N_T=old,
        teacher_logp_N_T=old * 3,
    )
    params = vp.parse_params({"weighting": "scope", "scope_use_student_weights": "false"})
    out = scope_step_weights(step, params)
    assert out.fields_N[vp.FIELD_W_STUDENT].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert out.fields_N[vp.FIELD_W_TEACHER][2:].tolist() != [1.0, 1.0]  # teacher path still weighted
    params = vp.parse_params({"weighting": "scope", "scope_use_teacher_weights": False})
    assert scope_step_weights(step, params).fields_N[vp.FIELD_W_TEACHER].tolist() == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="expected true/false"):
        vp.parse_params({"scope_use_teacher_weights": "maybe"})
