"""The methods' combined losses: SCOPE (§5.5, §5.7), self-distillation / SC-SDPO (§4.7, §6.2, §11 A5, A8),
SRPO's union objective (§7.4)."""

import random

import core_reference as ref
import pytest
import torch
from core_inputs import SEEDS, binary, close, log_probs, normal, ragged_mask, shapes

from opdkit.core.losses import aggregation_denominator
from opdkit.core.objectives import (
    ClipConfig,
    DistillAggregation,
    ScopeInputs,
    scope_denominators,
    scope_loss,
    self_distillation_loss,
    srpo_loss,
)
from opdkit.core.weights import ScopeWeights, SrpoRouting

NAN = float("nan")


def _scope_case(seed: int):
    rng = random.Random(seed)
    n, t = rng.randint(1, 10), rng.randint(1, 6)
    logp = log_probs(rng, n, t)
    old = (logp + normal(rng, n, t, scale=0.4)).clamp(max=0.0) if seed % 2 else logp.clone()
    teacher = log_probs(rng, n, t)
    mask = ragged_mask(rng, n, t)
    correct = [bool(x) for x in binary(rng, n)]
    valid = [rng.random() < 0.75 for _ in range(n)]
    # Rows without teacher scores carry NaN (§5.7: never silently filled); padding carries garbage.
    for i in range(n):
        for j in range(t):
            if not valid[i] and not correct[i]:
                teacher[i, j] = NAN
            elif not mask[i][j]:
                teacher[i, j] = rng.choice([NAN, 1e9, -float("inf")])
    w_stu = [rng.uniform(0.2, 2) if c else 0.0 for c in correct]
    w_tea = [rng.uniform(0.2, 2) if not c else 0.0 for c in correct]  # invalid rows get garbage weights too
    return logp, old, teacher, mask, correct, valid, w_stu, w_tea


@pytest.mark.parametrize("agg", ["code", "joint"])
@pytest.mark.parametrize("seed", SEEDS)
def test_scope_loss_matches_loop_reference(seed, agg):
    logp, old, teacher, mask, correct, valid, w_stu, w_tea = _scope_case(seed)
    logp = logp.clone().requires_grad_(True)
    inputs = ScopeInputs(
        logp_N_T=logp, old_logp_N_T=old, teacher_logp_N_T=teacher, mask_N_T=torch.tensor(mask),
        correct_N=torch.tensor(correct), teacher_valid_N=torch.tensor(valid),
    )  # fmt: skip
    weights = ScopeWeights(student_N=torch.tensor(w_stu), teacher_N=torch.tensor(w_tea))
    out = scope_loss(inputs, weights, agg=agg)  # default clip: SCOPE's 0.2/0.2 with dual clip 3 (§5.5)
    expected, expected_grad = ref.scope_loss(
        logp.tolist(), old.tolist(), teacher.tolist(), mask, correct, valid, w_stu, w_tea, agg
    )
    close(out.loss, expected)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    close(logp.grad, expected_grad)
    if agg == "code":
        assert out.metrics["pg_loss"] + out.metrics["mle_loss"] == pytest.approx(out.loss.item(), abs=1e-5)


def test_scope_loss_hand_case():
    # On-policy (old = logp, ratio 1, no clipping), so the PG per-token loss is −A.
    #   row 0 correct, logp (−1, −2), w_stu 1.5
    #   row 1 wrong,   logp (−0.5, −1.0), teacher (−0.2, −2.0), w_tea 1.2: A = 1.2·(0.3, −1.0) = (0.36, −1.2)
    #   row 2 wrong, teacher scoring failed (NaN, valid False), garbage weight 0.7: dropped entirely (§5.7)
    #   row 3 wrong,   logp (−2, pad), teacher (−1.0, pad), w_tea 0.8: A = 0.8·1.0 = 0.8
    # code:  L_PG over rows 0, 1, 3 (5 tokens; row 0 contributes 0 but counts) = (−0.36 + 1.2 − 0.8)/5 = 0.008
    #        L_MLE over row 0 (2 tokens) = 1.5·(1 + 2)/2 = 2.25;  loss = 2.258
    #        ∂/∂logp: row 0 −1.5/2 = −0.75 each; row 1 −A/5 = (−0.072, 0.24); row 3 −0.8/5 = −0.16; row 2 0
    # joint: (−0.36 + 1.2 − 0.8 + 1.5·3)/5 = 4.54/5 = 0.908; row 0 gradient −1.5/5 = −0.3, the rest as above.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -1.0], [-0.3, -0.3], [-2.0, -7.0]], requires_grad=True)
    teacher = torch.tensor([[NAN, NAN], [-0.2, -2.0], [NAN, NAN], [-1.0, NAN]])
    inputs = ScopeInputs(
        logp_N_T=logp, old_logp_N_T=logp.detach(), teacher_logp_N_T=teacher,
        mask_N_T=torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]]),
        correct_N=torch.tensor([True, False, False, False]),
        teacher_valid_N=torch.tensor([True, True, False, True]),
    )  # fmt: skip
    weights = ScopeWeights(student_N=torch.tensor([1.5, 0, 0, 0]), teacher_N=torch.tensor([0, 1.2, 0.7, 0.8]))
    for agg, value, row0 in [("code", 2.258, -0.75), ("joint", 0.908, -0.3)]:
        out = scope_loss(inputs, weights, agg=agg)
        assert out.loss.item() == pytest.approx(value, rel=1e-5)
        (grad,) = torch.autograd.grad(out.loss, logp)
        close(grad, [[row0, row0], [-0.072, 0.24], [0.0, 0.0], [-0.16, 0.0]], tol=1e-6)
    code = scope_loss(inputs, weights)
    assert code.metrics["pg_loss"] == pytest.approx(0.008, abs=1e-6)
    assert code.metrics["mle_loss"] == pytest.approx(2.25, rel=1e-6)


def test_scope_all_correct_batch_is_mle_only_and_all_wrong_is_opd_only():
    # §5.7: all rollouts correct -> L_MLE only (L_PG = 0); all wrong -> no MLE term. On-policy PG = −A.
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -4.0]], requires_grad=True)
    mask = torch.ones(2, 2)
    teacher = torch.tensor([[-0.5, -3.0], [-2.0, -3.0]])
    all_correct = ScopeInputs(logp, logp.detach(), teacher, mask, torch.tensor([True, True]))
    out = scope_loss(all_correct, ScopeWeights(torch.tensor([1.0, 1.0]), torch.zeros(2)))
    # L_MLE = (1 + 3 + 2 + 4)/4 = 2.5
    assert out.loss.item() == pytest.approx(2.5)
    assert out.metrics["pg_loss"] == 0.0
    all_wrong = ScopeInputs(logp, logp.detach(), teacher, mask, torch.tensor([False, False]))
    out = scope_loss(all_wrong, ScopeWeights(torch.zeros(2), torch.tensor([1.0, 1.0])))
    # A = T − old = (0.5, 0, 0, 1); L_PG = −(0.5 + 0 + 0 + 1)/4 = −0.375
    assert out.loss.item() == pytest.approx(-0.375)
    assert out.metrics["mle_loss"] == 0.0


@pytest.mark.parametrize("agg", ["code", "joint"])
@pytest.mark.parametrize("seed", SEEDS[:6])
def test_scope_micro_batches_sum_to_the_whole_batch(seed, agg):
    logp, old, teacher, mask, correct, valid, w_stu, w_tea = _scope_case(seed)
    n = logp.shape[0]

    def inputs(rows):
        return ScopeInputs(
            logp[rows], old[rows], teacher[rows], torch.tensor(mask)[rows],
            torch.tensor(correct)[rows], torch.tensor(valid)[rows],
        )  # fmt: skip

    def weights(rows):
        return ScopeWeights(torch.tensor(w_stu)[rows], torch.tensor(w_tea)[rows])

    everything = torch.arange(n)
    whole = scope_loss(inputs(everything), weights(everything), agg=agg).loss
    den = scope_denominators(inputs(everything))
    total = sum(
        scope_loss(
            inputs(everything[lo : lo + 3]), weights(everything[lo : lo + 3]), agg=agg, denominators=den
        ).loss
        for lo in range(0, n, 3)
    )
    close(total, whole, tol=1e-6)


def test_scope_clip_config_is_applied():
    # Off-policy token with ratio 2 and A = +1: SCOPE's default 0.2/0.2 clip gives −1.2; ClipConfig(0.2, 0.5)
    # gives −1.5 (§2.2). A wrong row with w_tea = 1 and teacher − old = 1.
    old = torch.tensor([[-2.0]])
    logp = old + torch.log(torch.tensor(2.0))
    inputs = ScopeInputs(logp, old, old + 1.0, torch.ones(1, 1), torch.tensor([False]))
    weights = ScopeWeights(torch.zeros(1), torch.ones(1))
    assert scope_loss(inputs, weights).loss.item() == pytest.approx(-1.2, rel=1e-6)
    assert scope_loss(inputs, weights, clip=ClipConfig(0.2, 0.5)).loss.item() == pytest.approx(-1.5, rel=1e-6)


# ------------------------------------------------------------------------------------- self-distillation


@pytest.mark.parametrize("seed", SEEDS)
def test_self_distillation_loss_matches_loop_reference(seed):
    rng = random.Random(seed)
    n, t = shapes(rng)
    div = normal(rng, n, t).abs().requires_grad_(True)
    mask = ragged_mask(rng, n, t)
    is_w = normal(rng, n, t).abs().clamp(max=2.0) if seed % 2 else None
    q_w = [rng.choice([0.0, 0.7, 1.3]) for _ in range(n)] if seed % 3 else None
    aggregation = rng.choice(
        [
            DistillAggregation(),
            DistillAggregation("token-mean", "valid"),
            DistillAggregation("seq-mean-token-mean", "valid"),
        ]
    )
    out = self_distillation_loss(
        div, torch.tensor(mask), is_weight_N_T=is_w,
        question_weight_N=None if q_w is None else torch.tensor(q_w), aggregation=aggregation,
    )  # fmt: skip
    is_list = None if is_w is None else is_w.tolist()
    close(
        out.loss,
        ref.self_distillation(div.tolist(), mask, is_list, q_w, aggregation.mode, aggregation.denominator),
    )
    out.loss.backward()
    assert torch.isfinite(div.grad).all()


def test_self_distillation_default_denominator_and_zero_weight_rows():
    # Default (§11 A8): seq-mean-token-mean over ALL sequences, masked ones counting as 0.
    # D = [[1, 3], [2, 2], [5, 5]], loss mask rows (1,1), (1,0), (0,0) (row 3 has no teacher: sd_mask 0).
    # Per-row token means: 2, 2, (none -> 0); / 3 sequences -> 4/3.
    # With SC-SDPO question weights (0.5, 0, w) the weighted per-row means are 1, 0, 0 -> 1/3: zero-weight
    # and masked rows still count in the denominator (§6.2 "same mask and same denominator", §11 A5).
    # IS weights (2, 1) on row 1 -> row mean (2·1 + 1·3)/2 = 2.5, so (2.5 + 2 + 0)/3 = 1.5.
    div = torch.tensor([[1.0, 3.0], [2.0, 2.0], [5.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    assert self_distillation_loss(div, mask).loss.item() == pytest.approx(4 / 3)
    weighted = self_distillation_loss(div, mask, question_weight_N=torch.tensor([0.5, 0.0, 7.0]))
    assert weighted.loss.item() == pytest.approx(1 / 3)
    is_w = torch.tensor([[2.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    assert self_distillation_loss(div, mask, is_weight_N_T=is_w).loss.item() == pytest.approx(1.5)
    # gradient w.r.t. D: w_q·IS·m / (tokens in row · 3 rows)
    (grad,) = torch.autograd.grad(weighted.loss, div)
    close(grad, [[0.5 / 6, 0.5 / 6], [0.0, 0.0], [0.0, 0.0]], tol=1e-7)
    # an empty loss mask (no rollout got a teacher) gives 0 (§4.7)
    assert self_distillation_loss(div, torch.zeros(3, 2)).loss.item() == 0.0


def test_self_distillation_weights_are_constants():
    div = torch.ones(2, 2, requires_grad=True)
    is_w = torch.full((2, 2), 1.5, requires_grad=True)
    q_w = torch.tensor([1.0, 2.0], requires_grad=True)
    out = self_distillation_loss(div, torch.ones(2, 2), is_weight_N_T=is_w, question_weight_N=q_w)
    out.loss.backward()
    assert div.grad is not None
    assert (is_w.grad is None or not is_w.grad.any()) and (q_w.grad is None or not q_w.grad.any())


def test_self_distillation_micro_batches_with_the_global_denominator():
    rng = random.Random(5)
    div, mask = normal(rng, 7, 4).abs(), torch.tensor(ragged_mask(rng, 7, 4))
    q_w = torch.tensor([rng.uniform(0, 2) for _ in range(7)])
    agg = DistillAggregation()
    whole = self_distillation_loss(div, mask, question_weight_N=q_w).loss
    den = aggregation_denominator(mask, agg.mode, denominator=agg.denominator)
    total = sum(
        self_distillation_loss(div[r], mask[r], question_weight_N=q_w[r], global_denominator=den).loss
        for r in (slice(0, 2), slice(2, 3), slice(3, 7))
    )
    close(total, whole, tol=1e-6)


# ------------------------------------------------------------------------------------------------- SRPO


@pytest.mark.parametrize("seed", SEEDS)
def test_srpo_loss_matches_loop_reference(seed):
    rng = random.Random(seed)
    n, t = shapes(rng)
    grpo_l, sdpo_l = normal(rng, n, t).requires_grad_(True), normal(rng, n, t).abs().requires_grad_(True)
    mask = ragged_mask(rng, n, t)
    sdpo_rows = [rng.random() < 0.5 for _ in range(n)]
    routing = SrpoRouting(sdpo_N=torch.tensor(sdpo_rows), grpo_N=~torch.tensor(sdpo_rows))
    out = srpo_loss(grpo_l, sdpo_l, routing, torch.tensor(mask))
    close(out.loss, ref.srpo_loss(grpo_l.tolist(), sdpo_l.tolist(), sdpo_rows, mask))
    tokens = max(sum(map(sum, mask)), 1)
    share = sum(sum(m) for m, s in zip(mask, sdpo_rows) if s) / tokens
    assert out.metrics["sdpo_token_fraction"] == pytest.approx(share)
    out.loss.backward()
    # ∂/∂ℓ = m/Σm on the row's own branch, 0 on the other branch
    m = torch.tensor(mask, dtype=torch.float64) / tokens
    rows = torch.tensor(sdpo_rows).unsqueeze(-1)
    close(sdpo_l.grad, torch.where(rows, m, 0.0))
    close(grpo_l.grad, torch.where(rows, 0.0, m))
    # micro-batches with the global token count add up to the whole
    den = torch.tensor(float(tokens))
    mask_t = torch.tensor(mask)
    parts = [
        srpo_loss(grpo_l[r], sdpo_l[r], SrpoRouting(routing.sdpo_N[r], routing.grpo_N[r]), mask_t[r],
                  global_denominator=den).loss
        for r in (slice(0, n // 2), slice(n // 2, n))
    ]  # fmt: skip
    close(sum(parts), out.loss, tol=1e-6)


def test_srpo_loss_hand_case():
    # §7.4: rows 0 (GRPO, 3 tokens, ℓ = 1, 2, 3) and 1 (SDPO, 1 valid token, ℓ_DW = 10): (6 + 10)/4 = 4;
    # each branch's weight is its token share (3/4 and 1/4), no mixing coefficient.
    grpo_l = torch.tensor([[1.0, 2.0, 3.0], [100.0, 100.0, 100.0]])
    sdpo_l = torch.tensor([[50.0, 50.0, 50.0], [10.0, NAN, NAN]])
    routing = SrpoRouting(sdpo_N=torch.tensor([False, True]), grpo_N=torch.tensor([True, False]))
    out = srpo_loss(grpo_l, sdpo_l, routing, torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert out.loss.item() == pytest.approx(4.0)
    assert out.metrics["sdpo_token_fraction"] == pytest.approx(0.25)


def test_scope_loss_floors_minus_inf_teacher_logprobs():
    # Two wrong rows, on-policy. Row 0's teacher gives −inf to its first token. Per §5.7 the loss must equal
    # the loss with that log-prob at −1e4: finite (w_tea = 0 -> the row contributes 0; w_tea = 1 -> a large
    # but finite advantage, dual-clipped).
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    teacher = torch.tensor([[-float("inf"), -1.0], [-1.0, -1.0]])
    mask, wrong = torch.ones(2, 2), torch.tensor([False, False])
    for w_tea in ([0.0, 2.0], [1.0, 1.0]):
        weights = ScopeWeights(torch.zeros(2), torch.tensor(w_tea))
        floored = scope_loss(ScopeInputs(logp, logp.detach(), teacher.clamp(min=-1e4), mask, wrong), weights)
        out = scope_loss(ScopeInputs(logp, logp.detach(), teacher, mask, wrong), weights)
        assert torch.isfinite(floored.loss)
        assert torch.isfinite(out.loss), f"w_tea = {w_tea}: loss {out.loss.item()}"
        close(out.loss, floored.loss, tol=1e-6)
