"""The methods compose as the papers say: each equality is checked on loss value and parameter gradient.

- ``scope`` with weighting off = OPD (clipped surrogate, A = logp_T − logp_old) on wrong rollouts + MLE on
  correct ones, token-means as in the code path (§5.5, §5.6); with the dual path off = ``opd``.
- ``sc_sdpo`` with every pass rate equal = ``sdpo`` (§6.1: equal u_q normalise to 1).
- ``sdpo_hard_filter`` drops exactly the degenerate groups (§6.4).
- ``srpo`` routes failed rows with a correct sibling to SDPO and every other row to GRPO (§7.4).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from opdkit.core.losses import aggregate, clipped_surrogate
from opdkit.core.weights import pass_rate_weights
from opdkit.train.batch import Prepared
from opdkit.train.forward import forward_response
from opdkit.train.methods import METHODS
from opdkit.train.student import FULL_LOGITS
from opdkit.train.update import micro_batch_loss

# 4 groups of 4: pass rates 0.5, 0.25, 0 (all wrong) and 1 (all correct).
MIXED = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1]
HALF_EVERYWHERE = [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 1]


def _loss_and_grad(name, cfg, batch, ctx, prepared=None):
    method = METHODS.get(name)
    prepared = prepared or method.prepare(cfg, batch, ctx)
    ctx.student.zero_grad(set_to_none=True)
    denoms = method.denominators(cfg, batch, prepared.rows)
    out = micro_batch_loss(method, cfg, batch, prepared.rows, denoms, ctx)
    out.loss.backward()
    grad = torch.cat([p.grad.flatten() for p in ctx.student.parameters() if p.grad is not None])
    return out.loss.detach(), grad


def _close(a, b):
    assert a[1].abs().sum() > 0, "a vanishing gradient would make the comparison vacuous"
    assert torch.allclose(a[0], b[0], atol=1e-6, rtol=1e-5), (a[0], b[0])
    assert torch.allclose(a[1], b[1], atol=1e-6, rtol=1e-4)


def test_scope_without_weights_is_opd_on_wrong_plus_mle_on_correct(step_setup):
    cfg, batch, ctx = step_setup("scope", MIXED, extra=["method.use_seq_weights=false"])
    scope = _loss_and_grad("scope", cfg, batch, ctx)

    teacher = ctx.teacher.score(
        batch.unpadded_prompts(), batch.unpadded_responses(), pad_to=batch.response_ids_N_T.shape[1]
    )
    mask = batch.response_mask_N_T.bool()
    correct = batch.success_N.unsqueeze(-1)
    ctx.student.zero_grad(set_to_none=True)
    logp = forward_response(ctx.student, batch.sequences(), ctx.temperature).logp_N_T
    # OPD advantage on the wrong rows, 0 on the correct ones; token-mean over every valid token
    adv = torch.where(mask & ~correct, teacher.logp_N_T - batch.old_logp_N_T, 0.0)
    surrogate = clipped_surrogate(logp, batch.old_logp_N_T, adv, clip_low=0.2, clip_high=0.2)
    opd = aggregate(surrogate.loss_N_T, mask, "token-mean")
    mle = aggregate(-logp, mask & correct, "token-mean")  # unweighted MLE over the correct rows' tokens
    (opd + mle).backward()
    hand = (opd + mle).detach(), torch.cat([p.grad.flatten() for p in ctx.student.parameters()])
    _close(scope, hand)


def test_scope_without_the_dual_path_is_opd(step_setup):
    cfg, batch, ctx = step_setup("scope", MIXED, extra=["method.dual_path=false"])
    scope = _loss_and_grad("scope", cfg, batch, ctx)
    opd_cfg, _, _ = step_setup("opd", MIXED)
    _close(scope, _loss_and_grad("opd", opd_cfg, batch, ctx))


def test_sc_sdpo_with_equal_pass_rates_is_sdpo(step_setup):
    cfg, batch, ctx = step_setup("sc_sdpo", HALF_EVERYWHERE)
    prepared = METHODS.get("sc_sdpo").prepare(cfg, batch, ctx)
    assert torch.equal(prepared.rows.question_weight_N, torch.ones(16))
    sdpo_cfg, _, _ = step_setup("sdpo", HALF_EVERYWHERE)
    _close(_loss_and_grad("sc_sdpo", cfg, batch, ctx), _loss_and_grad("sdpo", sdpo_cfg, batch, ctx))


def test_sc_sdpo_question_weights_follow_the_group_pass_rates(step_setup):
    cfg, batch, ctx = step_setup("sc_sdpo", MIXED)
    w = METHODS.get("sc_sdpo").prepare(cfg, batch, ctx).rows.question_weight_N
    expected_P = pass_rate_weights(torch.tensor([0.5, 0.25, 0.0, 1.0]))
    assert torch.allclose(w, expected_P.repeat_interleave(4))


def test_hard_filter_drops_exactly_the_degenerate_groups(step_setup):
    cfg, batch, ctx = step_setup("sdpo_hard_filter", MIXED)
    prepared = METHODS.get("sdpo_hard_filter").prepare(cfg, batch, ctx)
    informative = torch.tensor([True] * 8 + [False] * 8)  # groups 3 (p = 0) and 4 (p = 1) are degenerate
    assert torch.equal(prepared.rows.question_weight_N, informative.float())

    sdpo_cfg, _, _ = step_setup("sdpo", MIXED)
    sdpo_prep = METHODS.get("sdpo").prepare(sdpo_cfg, batch, ctx)
    # drop the degenerate groups
    rows = dataclasses.replace(
        sdpo_prep.rows, loss_mask_N_T=sdpo_prep.rows.loss_mask_N_T & informative.unsqueeze(-1)
    )
    # Same denominator as the filter (every sequence counts, §11 A5), only the dropped rows' terms are gone.
    filtered_sdpo = _loss_and_grad("sdpo", sdpo_cfg, batch, ctx, Prepared(rows=rows))
    _close(_loss_and_grad("sdpo_hard_filter", cfg, batch, ctx), filtered_sdpo)


def test_srpo_routes_failed_rows_with_a_correct_sibling_to_sdpo(step_setup):
    cfg, batch, ctx = step_setup("srpo", MIXED)
    routed = METHODS.get("srpo").prepare(cfg, batch, ctx).rows.sdpo_N
    expected = []
    for i in range(16):  # §7.4 by loop: failed, and some other member of its group succeeded
        group = range(4 * (i // 4), 4 * (i // 4) + 4)
        expected.append(not MIXED[i] and any(MIXED[j] for j in group if j != i))
    assert routed.tolist() == expected
    assert routed.tolist() == [False, True, False, True, True, True, False, True] + [False] * 8


@pytest.mark.parametrize("method", ["grpo", "opd", "scope", "sdpo", "sc_sdpo", "sdpo_paced", "srpo"])
def test_hidden_state_path_equals_the_full_logit_path(step_setup, method):
    # The chunked losses from hidden states (the default) and the full-logit losses are one function
    # of the weights: equal value and gradient on a real batch.
    cfg, batch, ctx = step_setup(method, MIXED)
    if method == "sdpo_paced":
        ctx.paced_weights_D = torch.linspace(0.0, 2.0, 24)
    prepared = METHODS.get(method).prepare(cfg, batch, ctx)
    chunked = _loss_and_grad(method, cfg, batch, ctx, prepared)
    ctx.forward = FULL_LOGITS
    _close(chunked, _loss_and_grad(method, cfg, batch, ctx, prepared))


def test_trust_region_teacher_on_the_hidden_state_path(step_setup):
    cfg, batch, ctx = step_setup("sdpo", MIXED, extra=["self_teacher.weights=trust-region"])
    prepared = METHODS.get("sdpo").prepare(cfg, batch, ctx)
    with torch.no_grad():  # move the student away from the base so lerp(z_base, z_student) is not trivial
        for p in ctx.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    chunked = _loss_and_grad("sdpo", cfg, batch, ctx, prepared)
    ctx.forward = FULL_LOGITS
    _close(chunked, _loss_and_grad("sdpo", cfg, batch, ctx, prepared))
