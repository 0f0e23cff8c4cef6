"""Method weights (§5.4-§5.7 SCOPE, §6 SC-SDPO, §6.4 hard filter, §7.3 PACED, §7.4 SRPO)."""

import math
import random

import core_reference as ref
import pytest
import torch
from core_inputs import SEEDS, binary, close, group_ids, normal, ragged_mask

from opdkit.core.weights import (
    SCOPE_SIGN_PRESETS,
    entropy_weights,
    hard_filter_weights,
    paced_weights,
    pass_rate_weights,
    scope_weights,
    srpo_routing,
)


def _pass_rates(rng: random.Random, q: int) -> list[float]:
    """Per-question pass rates k/n (n in 1..16), degenerate 0 and 1 included, or continuous ones."""
    if rng.random() < 0.3:
        return [rng.random() for _ in range(q)]
    n = rng.randint(1, 16)
    return [rng.randint(0, n) / n for _ in range(q)]


# ------------------------------------------------------------------------------------------------ SC-SDPO


@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.25])
@pytest.mark.parametrize("seed", SEEDS)
def test_pass_rate_weights_match_loop_reference(seed, alpha):
    rng = random.Random(seed)
    p = _pass_rates(rng, rng.randint(1, 20))
    w = pass_rate_weights(torch.tensor(p), alpha=alpha)
    close(w, ref.sc_sdpo_weights(p, alpha))
    informative = [0 < x < 1 for x in p]
    if any(informative):  # §6.1: mean exactly 1 over the informative questions, exactly 0 elsewhere
        assert float(w[torch.tensor(informative)].mean()) == pytest.approx(1.0, abs=1e-6)
    assert all(float(x) == 0.0 for x, keep in zip(w, informative) if not keep)


def test_sc_sdpo_raw_weights_for_n_8():
    # §6.1 table, u = (p(1−p))^α with p = k/8, so p(1−p) = k(8−k)/64:
    #   k=1: 7/64  -> α=0.5: √7/8 = 2.64575/8 = 0.33072;   α=1: 0.109375
    #   k=2: 12/64 -> α=0.5: √12/8 = 3.46410/8 = 0.43301;  α=1: 0.1875
    #   k=3: 15/64 -> α=0.5: √15/8 = 3.87298/8 = 0.48412;  α=1: 0.234375
    #   k=4: 16/64 -> α=0.5: 4/8 = 0.5;                     α=1: 0.25
    # One batch holding k = 1..7 is symmetric (k and 8−k give the same u), so mean u = (2(u1+u2+u3)+u4)/7;
    # the raw u is recovered as w·mean(u).
    p = torch.tensor([k / 8 for k in range(1, 8)])
    for alpha, table in [(0.5, [0.331, 0.433, 0.484, 0.500]), (1.0, [0.109, 0.188, 0.234, 0.250])]:
        exact = [(k * (8 - k) / 64) ** alpha for k in range(1, 5)]
        assert exact == pytest.approx(table, abs=5.01e-4)  # the table's rounding (0.1875 -> 0.188)
        mean_u = (2 * sum(exact[:3]) + exact[3]) / 7
        w = pass_rate_weights(p, alpha=alpha)
        raw = (w * mean_u).tolist()
        assert raw[:4] == pytest.approx(exact, rel=1e-5)
        assert raw[4:] == pytest.approx(exact[:3][::-1], rel=1e-5)  # k = 5, 6, 7 mirror k = 3, 2, 1


def test_sc_sdpo_unit_mean_on_a_concrete_batch():
    # Questions with n = 8 and k = (1, 4, 0, 8, 2): Q_nd = {k=1, k=4, k=2} (k = 0 and 8 are degenerate).
    # α = 0.5: u = (√7/8, 1/2, √12/8) = (0.330719, 0.5, 0.433013); mean = 1.263732/3 = 0.421244
    # w = u / mean = 3u/Σu, Σu = (√7 + 4 + √12)/8 = 10.109853/8, w = (0.785101, 1.186961, 0, 0, 1.027938);
    # Σw over Q_nd = 3 and the degenerate questions get exactly 0.
    # α = 1: u = (7, 16, 12)/64, Σu = 35/64, so w = 3u/Σu = (21/35, 48/35, 0, 0, 36/35)
    #      = (0.6, 1.371429, 0, 0, 1.028571).
    p = torch.tensor([1 / 8, 4 / 8, 0.0, 1.0, 2 / 8])
    s = math.sqrt(7) + 4 + math.sqrt(12)
    expected = [3 * math.sqrt(7) / s, 12 / s, 0.0, 0.0, 3 * math.sqrt(12) / s]
    assert expected == pytest.approx([0.785101, 1.186961, 0.0, 0.0, 1.027938], abs=1e-6)
    w = pass_rate_weights(p, alpha=0.5)
    close(w, expected, tol=1e-6)
    assert w[2].item() == 0.0 and w[3].item() == 0.0
    close(pass_rate_weights(p, alpha=1.0), [21 / 35, 48 / 35, 0.0, 0.0, 36 / 35], tol=1e-6)


def test_all_degenerate_and_empty_batches_give_zero_weights():
    # §6.3: Q_nd empty -> every weight is 0 (no NaN from 0/0); the same for PACED's and the hard filter.
    p = torch.tensor([0.0, 1.0, 1.0, 0.0])
    for alpha in (0.5, 1.0):
        w = pass_rate_weights(p, alpha=alpha)
        assert w.tolist() == [0.0] * 4
    assert paced_weights(p).tolist() == [0.0] * 4
    assert hard_filter_weights(p).tolist() == [0.0] * 4
    assert pass_rate_weights(torch.zeros(0)).shape == (0,)
    assert paced_weights(torch.zeros(0)).shape == (0,)


@pytest.mark.parametrize("seed", SEEDS)
def test_hard_filter_and_paced_match_loop_reference(seed):
    rng = random.Random(seed)
    p = _pass_rates(rng, rng.randint(1, 20))
    close(hard_filter_weights(torch.tensor(p)), ref.hard_filter(p))
    close(paced_weights(torch.tensor(p)), ref.paced(p))  # a = b = 1: PACED v3, SC-SDPO's baseline
    a, b = rng.choice([(2.0, 1.0), (0.5, 3.0)])
    close(paced_weights(torch.tensor(p), a=a, b=b), ref.paced(p, a, b))


def test_paced_is_the_variance_kernel_normalised_over_the_training_set():
    # §7.3: w = p0(1−p0) / mean over non-degenerate p0. p0 = (0.5, 0.25, 0, 1): u = (0.25, 0.1875) on the
    # first two, mean 0.21875, so w = (0.25/0.21875, 0.1875/0.21875, 0, 0) = (8/7, 6/7, 0, 0).
    close(paced_weights(torch.tensor([0.5, 0.25, 0.0, 1.0])), [8 / 7, 6 / 7, 0.0, 0.0], tol=1e-6)


# -------------------------------------------------------------------------------------------------- SCOPE


@pytest.mark.parametrize("normalization", ["mean1", "sum1"])
@pytest.mark.parametrize("seed", SEEDS)
def test_scope_weights_match_loop_reference(seed, normalization):
    rng = random.Random(seed)
    n = rng.randint(1, 20)
    ids = group_ids(rng, n)
    correct = [bool(x) for x in binary(rng, n)]
    student_seq = (-normal(rng, n).abs()).tolist()
    teacher_seq = (-normal(rng, n).abs()).tolist()
    tau = rng.choice([0.5, 1.0, 3.0])
    e_s, e_t = rng.choice([1.0, -1.0, 0.5]), rng.choice([-1.0, 1.0, -2.0])
    valid = [rng.random() < 0.8 for _ in range(n)] if seed % 2 else None
    teacher_in = list(teacher_seq)
    if valid is not None:  # a failed teacher row carries NaN scores; they must be ignored (§5.7)
        teacher_in = [t if v or c else float("nan") for t, v, c in zip(teacher_seq, valid, correct)]
    w = scope_weights(
        torch.tensor(student_seq), torch.tensor(teacher_in), torch.tensor(correct), torch.tensor(ids),
        tau=tau, student_exponent=e_s, teacher_exponent=e_t, normalization=normalization,
        valid_N=None if valid is None else torch.tensor(valid),
    )  # fmt: skip
    exp_s, exp_t = ref.scope(
        student_seq, teacher_seq, correct, ids, tau=tau, student_exponent=e_s, teacher_exponent=e_t,
        normalization=normalization, valid=valid,
    )  # fmt: skip
    close(w.student_N, exp_s)
    close(w.teacher_N, exp_t)


def _two_members(seq_logp, *, correct, exponents):
    """The §5.6 example on one path of a two-member group, the other group member id interleaved away."""
    return scope_weights(
        torch.tensor(seq_logp), torch.tensor(seq_logp), torch.tensor([correct, correct]),
        torch.tensor([11, 11]), student_exponent=exponents[0], teacher_exponent=exponents[1],
    )  # fmt: skip


def test_scope_two_member_example_of_section_5_6():
    # §5.6: mean log-probs (−0.1, −1.0), i.e. PPL (e^0.1, e^1) = (1.105, 2.718). The code's flag sign s gives
    # softmax logits s·ℓ/τ. Sign +1: softmax(−0.1, −1.0) = (e^−0.1, e^−1)/(e^−0.1 + e^−1)
    # = (0.904837, 0.367879)/1.272717 = (0.710949, 0.289051); mean-1 scaling ×2 -> (1.42190, 0.57810).
    # Sign +1 is weight ∝ PPL^(−1/τ), i.e. exponent −1; sign −1 (exponent +1) swaps them: (0.57810, 1.42190).
    hi, lo = (
        2 * math.exp(-0.1) / (math.exp(-0.1) + math.exp(-1.0)),
        2 * math.exp(-1.0) / (math.exp(-0.1) + math.exp(-1.0)),
    )
    assert (hi, lo) == pytest.approx((1.42, 0.58), abs=5e-3)
    ell = [-0.1, -1.0]
    # student path (both rows correct)
    close(_two_members(ell, correct=True, exponents=(-1.0, -1.0)).student_N, [hi, lo])
    close(_two_members(ell, correct=True, exponents=(1.0, -1.0)).student_N, [lo, hi])
    # teacher path (both rows wrong)
    close(_two_members(ell, correct=False, exponents=(1.0, -1.0)).teacher_N, [hi, lo])
    close(_two_members(ell, correct=False, exponents=(1.0, 1.0)).teacher_N, [lo, hi])
    # the other path is 0
    assert _two_members(ell, correct=True, exponents=(1.0, -1.0)).teacher_N.tolist() == [0.0, 0.0]
    assert _two_members(ell, correct=False, exponents=(1.0, -1.0)).student_N.tolist() == [0.0, 0.0]


def test_scope_sign_presets():
    # §5.6/§11 A1. 'paper': w_stu ∝ PPL_S^{+1/τ} (unconfident correct paths weigh more) and
    # w_tea ∝ PPL_T^{−1/τ} (unreliable corrections weigh less). 'released_scripts' sets both code flags True,
    # sign +1 on both paths, i.e. ∝ PPL^{−1/τ} on both: the teacher path matches the paper, the student path
    # is inverted. On the §5.6 example (ℓ = (−0.1, −1.0), PPL (1.105, 2.718)):
    #   paper:            student (0.578, 1.422), teacher (1.422, 0.578)
    #   released_scripts: student (1.422, 0.578), teacher (1.422, 0.578)
    hi = 2 * math.exp(-0.1) / (math.exp(-0.1) + math.exp(-1.0))
    lo = 2 - hi
    assert set(SCOPE_SIGN_PRESETS) >= {"paper", "released_scripts"}
    expected = {"paper": ([lo, hi], [hi, lo]), "released_scripts": ([hi, lo], [hi, lo])}
    for name, (stu, tea) in expected.items():
        exponents = SCOPE_SIGN_PRESETS[name]
        close(_two_members([-0.1, -1.0], correct=True, exponents=exponents).student_N, stu)
        close(_two_members([-0.1, -1.0], correct=False, exponents=exponents).teacher_N, tea)
    # The paper preset is the function's default (student_exponent = +1, teacher_exponent = −1).
    default = scope_weights(torch.tensor([-0.1, -1.0]), torch.tensor([-0.1, -1.0]),
                            torch.tensor([True, True]), torch.tensor([0, 0]))  # fmt: skip
    close(default.student_N, [lo, hi])


def test_scope_weight_scales_and_edge_cases():
    # Group 5: correct rows 0, 2 (ℓS = −0.1, −1.0) and wrong rows 1, 3, 4 (ℓT = −0.5, −0.5, −0.5);
    # group 9: correct row 5, wrong row 6 (singleton paths); group 7: all correct (no teacher path).
    ell_s = torch.tensor([-0.1, -9.0, -1.0, -9.0, -9.0, -3.0, -9.0, -0.2, -0.2])
    ell_t = torch.tensor([-9.0, -0.5, -9.0, -0.5, -0.5, -9.0, -7.0, -9.0, -9.0])
    correct = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1, 1]).bool()
    ids = torch.tensor([5, 5, 5, 5, 5, 9, 9, 7, 7])
    w = scope_weights(ell_s, ell_t, correct, ids)
    # paper default: student ∝ PPL_S^{+1}: softmax(+0.1, +1.0)·2 = (0.57810, 1.42190);
    # equal teacher ℓ: uniform -> mean-1 weights 1 each; singleton paths get exactly 1.0 (§5.4).
    lo = 2 * math.exp(0.1) / (math.exp(0.1) + math.exp(1.0))
    close(w.student_N, [lo, 0, 2 - lo, 0, 0, 1.0, 0, 1.0, 1.0])
    close(w.teacher_N, [0, 1.0, 0, 1.0, 1.0, 0, 1.0, 0, 0])
    # sum1 (the paper's scale): each path of each group sums to 1: (lo/2, 1−lo/2), (1/3, 1/3, 1/3),
    # singletons 1.
    w1 = scope_weights(ell_s, ell_t, correct, ids, normalization="sum1")
    close(w1.student_N, [lo / 2, 0, 1 - lo / 2, 0, 0, 1.0, 0, 0.5, 0.5])
    close(w1.teacher_N, [0, 1 / 3, 0, 1 / 3, 1 / 3, 0, 1.0, 0, 0])
    # τ → large flattens to uniform; τ small concentrates on the extreme member (§5.4).
    flat = scope_weights(ell_s, ell_t, correct, ids, tau=1e4)
    close(flat.student_N[[0, 2]], [1.0, 1.0], tol=1e-3)
    sharp = scope_weights(ell_s, ell_t, correct, ids, tau=0.01)
    close(sharp.student_N[[0, 2]], [0.0, 2.0], tol=1e-6)
    assert torch.isfinite(sharp.student_N).all()


def test_scope_weights_carry_no_gradient():
    # §5.7: weights are constants (no-grad).
    ell = torch.tensor([-0.3, -1.2, -0.4], requires_grad=True)
    w = scope_weights(ell, ell, torch.tensor([True, True, False]), torch.tensor([1, 1, 1]))
    assert not w.student_N.requires_grad and not w.teacher_N.requires_grad


def test_scope_invalid_teacher_rows_are_excluded_not_maximal():
    # §5.7: a failed teacher row (reference fills logp_T = 0, PPL_T = 1) must not get a maximal weight;
    # it is excluded from the softmax. Wrong rows 0, 1, 2 with ℓT = (−1, −1, NaN) and row 2 invalid:
    # the remaining two share mean-1 weights (1, 1); the invalid one gets 0. Row 3 (correct, invalid) keeps
    # its student weight: the student path never uses the teacher.
    w = scope_weights(
        torch.tensor([-1.0, -1.0, -1.0, -0.5]), torch.tensor([-1.0, -1.0, float("nan"), float("nan")]),
        torch.tensor([False, False, False, True]), torch.tensor([4, 4, 4, 4]),
        valid_N=torch.tensor([True, True, False, False]),
    )  # fmt: skip
    close(w.teacher_N, [1.0, 1.0, 0.0, 0.0])
    close(w.student_N, [0.0, 0.0, 0.0, 1.0])


def test_scope_weights_on_an_empty_batch():
    empty = torch.zeros(0)
    w = scope_weights(empty, empty, empty.bool(), empty.long())
    assert w.student_N.shape == (0,) and w.teacher_N.shape == (0,)


# --------------------------------------------------------------------------------------------------- SRPO


@pytest.mark.parametrize("seed", SEEDS)
def test_srpo_routing_matches_loop_reference(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 20)
    ids, success = group_ids(rng, n), [bool(x) for x in binary(rng, n)]
    routing = srpo_routing(torch.tensor(success), torch.tensor(ids))
    expected = ref.srpo_routing(success, ids)
    assert routing.sdpo_N.tolist() == expected
    assert routing.grpo_N.tolist() == [not x for x in expected]


def test_srpo_routing_hand_case():
    # §7.4: group 1 = (correct, wrong, wrong): the wrong ones have a correct sibling -> SDPO; the correct one
    # -> GRPO. Group 2 = (wrong, wrong): no correct sibling -> GRPO. Group 3 = (correct) alone -> GRPO.
    routing = srpo_routing(torch.tensor([1, 0, 0, 0, 0, 1]), torch.tensor([1, 2, 1, 2, 1, 3]))
    assert routing.sdpo_N.tolist() == [False, False, True, False, True, False]


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("seed", SEEDS)
def test_entropy_weights_match_loop_reference(seed, beta):
    rng = random.Random(seed)
    n, t = rng.randint(1, 10), rng.randint(1, 6)
    entropy = normal(rng, n, t).abs() * 3
    mask = ragged_mask(rng, n, t, holes=seed % 2 == 1)
    w = entropy_weights(entropy, torch.tensor(mask), beta=beta)
    close(w, ref.entropy_weights(entropy.tolist(), mask, beta))
    if any(map(any, mask)):  # mean exactly 1 over the routed valid tokens
        assert float(w[torch.tensor(mask).bool()].mean()) == pytest.approx(1.0, abs=1e-5)


def test_entropy_weights_hand_case_and_empty_mask():
    # H = (0, ln 2) on two valid tokens, β = 1: w~ = (1, 1/2), mean 3/4 -> w = (4/3, 2/3); masked token 0.
    # A huge entropy on a masked token must not matter.
    w = entropy_weights(torch.tensor([[0.0, math.log(2), 1e30]]), torch.tensor([[1, 1, 0]]))
    close(w, [[4 / 3, 2 / 3, 0.0]], tol=1e-6)
    assert entropy_weights(torch.ones(2, 3), torch.zeros(2, 3)).tolist() == [[0.0] * 3] * 2


def test_scope_weights_with_minus_inf_teacher_logprob_stay_finite():
    # Wrong rows with ℓT = (−inf, −1, −2), teacher_exponent = +1 (weight ∝ PPL_T^{+1}): with the §5.7 floor
    # ℓT = −1e4 the first row has by far the largest PPL and takes all the mean-1 mass: (3, 0, 0).
    ell_t = torch.tensor([-float("inf"), -1.0, -2.0])
    args = (torch.full((3,), -1.0), torch.tensor([False] * 3), torch.tensor([0, 0, 0]))
    floored = scope_weights(args[0], ell_t.clamp(min=-1e4), *args[1:], teacher_exponent=1.0)
    close(floored.teacher_N, [3.0, 0.0, 0.0])
    w = scope_weights(args[0], ell_t, *args[1:], teacher_exponent=1.0)
    assert torch.isfinite(w.teacher_N).all(), w.teacher_N
    close(w.teacher_N, floored.teacher_N)
