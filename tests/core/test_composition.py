"""The composition layer (``opdkit.core.composition``): success rule, pass rates, question weights, SCOPE's
path weights with every switch and unscored rows, SRPO's entropy weights.

Each function is checked against a slow per-row loop written here from docs/algorithms.md (on top of the
references in ``core_reference``), on hand-computed cases, and on properties: permuting the rows of a group
permutes the weights, and rows whose teacher scores never arrived get weight 0 and change nothing else.
"""

from __future__ import annotations

import math
import random

import core_reference as ref
import pytest
import torch
from core_inputs import SEEDS, close, group_ids, log_probs, ragged_mask

from opdkit.core.composition import (
    QUESTION_WEIGHTINGS,
    QuestionWeightInputs,
    ScopeSwitches,
    question_pass_rates,
    question_weights,
    rows_with_teacher_scores,
    scope_exponents,
    scope_mle_scale,
    scope_path_weights,
    srpo_entropy_weights,
    success_from_rewards,
)
from opdkit.core.registry import UnknownNameError
from opdkit.core.weights import srpo_routing

# ----------------------------------------------------------------------------------- loop references


def sc_rows(success: list[bool], ids: list[int], alpha: float) -> list[float]:
    """§6.1 per row: the question's (p(1−p))^α divided by the mean over the step's informative QUESTIONS."""
    questions = sorted(set(ids))
    p = {q: sum(s for s, i in zip(success, ids) if i == q) / ids.count(q) for q in questions}
    w = dict(zip(questions, ref.sc_sdpo_weights([p[q] for q in questions], alpha)))
    return [w[i] for i in ids]


def scope_rows(old, teacher, mask, success, ids, valid, sw: ScopeSwitches) -> tuple[list, list, list]:
    """§5.3-§5.7 per row, one switch at a time: (student weights, teacher weights, MLE-path rows)."""
    n = len(ids)
    if not sw.dual_path:  # plain OPD: weight 1 on every scored row
        return [0.0] * n, [1.0 if valid[i] else 0.0 for i in range(n)], [False] * n
    mean = [sum(x for x, m in zip(row, mrow) if m) / max(1, sum(mrow)) for row, mrow in zip(old, mask)]
    t_mean = [
        sum(x for x, m in zip(row, mrow) if m) / max(1, sum(mrow)) if valid[i] else 0.0
        for i, (row, mrow) in enumerate(zip(teacher, mask))
    ]
    student, teach = ref.scope(
        mean, t_mean, success, ids, tau=sw.tau, student_exponent=sw.student_exponent,
        teacher_exponent=sw.teacher_exponent, normalization=sw.normalization, valid=valid,
    )  # fmt: skip
    if not (sw.use_seq_weights and sw.use_student_weights):
        student = [1.0 if success[i] else 0.0 for i in range(n)]
    if not (sw.use_seq_weights and sw.use_teacher_weights):
        teach = [1.0 if not success[i] and valid[i] else 0.0 for i in range(n)]
    return student, teach, list(success)


# ------------------------------------------------------------------------------------------ success rule


def test_success_from_rewards_is_the_threshold_rule():
    # §1.4: c = 1[r ≥ 0.5]; 0.5 itself counts as a success, a continuous 0.49 does not.
    rewards = torch.tensor([0.0, 0.49, 0.5, 1.0, 0.7])
    assert success_from_rewards(rewards).tolist() == [False, False, True, True, True]
    assert success_from_rewards(rewards, threshold=0.8).tolist() == [False, False, False, True, False]


# ------------------------------------------------------------------------------------------- pass rates


@pytest.mark.parametrize("seed", SEEDS)
def test_question_pass_rates_match_loop_reference(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 20)
    ids, success = group_ids(rng, n), [rng.random() < 0.5 for _ in range(n)]
    rates = question_pass_rates(torch.tensor(success), torch.tensor(ids))
    close(rates.per_row(), ref.pass_rates([float(s) for s in success], ids))
    questions = sorted(set(ids))  # one entry per question, in increasing id order
    expected_q = [sum(s for s, i in zip(success, ids) if i == q) / ids.count(q) for q in questions]
    close(rates.pass_rate_Q, expected_q)
    x = [rng.random() for _ in range(n)]
    close(rates.per_question(torch.tensor(x)), [
        sum(v for v, i in zip(x, ids) if i == q) / ids.count(q) for q in questions
    ])  # fmt: skip


def test_question_pass_rates_hand_case():
    # groups 7: (1, 0, 1) -> 2/3; 3: (0, 0) -> 0; ids sorted -> [3, 7]: p_Q = [0, 2/3], informative [F, T]
    rates = question_pass_rates(torch.tensor([1, 0, 0, 1, 0]), torch.tensor([7, 3, 7, 7, 3]))
    close(rates.pass_rate_Q, [0.0, 2 / 3])
    assert rates.question_N.tolist() == [1, 0, 1, 1, 0]
    assert rates.informative_Q.tolist() == [False, True]


# ------------------------------------------------------------------------------------- question weights


@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_sc_question_weights_match_loop_reference(seed, alpha):
    rng = random.Random(seed)
    n = rng.randint(1, 24)
    ids, success = group_ids(rng, n), [rng.random() < 0.5 for _ in range(n)]
    inputs = QuestionWeightInputs(torch.tensor(success), torch.tensor(ids), alpha=alpha)
    close(question_weights("pass_rate", inputs), sc_rows(success, ids, alpha))
    hard = question_weights("hard_filter", inputs)
    close(hard, [1.0 if 0 < p < 1 else 0.0 for p in ref.pass_rates([float(s) for s in success], ids)])


def test_sc_question_weights_hand_case_mean_over_questions_not_rollouts():
    # q0: 1 of 4 (p = 1/4), q1: 2 of 2 (p = 1, degenerate), q2: 1 of 2 (p = 1/2). α = 0.5:
    # u0 = sqrt(3/16) = 0.4330127, u2 = sqrt(1/4) = 0.5; mean over the two informative QUESTIONS 0.46650635
    # (a mean over rollouts would weigh q0 four times), so w0 = 0.9282032, w2 = 1.0717968, w1 = 0.
    success = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    w = question_weights("pass_rate", QuestionWeightInputs(success, ids, alpha=0.5))
    close(w, [0.9282032] * 4 + [0.0] * 2 + [1.0717968] * 2, tol=1e-6)
    # α = 1: u0 = 3/16, u2 = 1/4, mean 7/32 -> w0 = 6/7, w2 = 8/7
    w1 = question_weights("pass_rate", QuestionWeightInputs(success, ids, alpha=1.0))
    close(w1, [6 / 7] * 4 + [0.0] * 2 + [8 / 7] * 2)


def test_paced_maps_the_frozen_per_example_weights_to_rows():
    weights_D = torch.tensor([0.0, 1.5, 0.5])  # example 0 degenerate at the offline pass
    inputs = QuestionWeightInputs(
        torch.tensor([1, 0, 1, 0]), torch.tensor([5, 5, 9, 9]),
        example_index_N=torch.tensor([2, 2, 1, 1]), offline_weights_D=weights_D,
    )  # fmt: skip
    assert question_weights("paced", inputs).tolist() == [0.5, 0.5, 1.5, 1.5]  # the step's p plays no part
    with pytest.raises(ValueError, match="offline_weights_D"):
        question_weights("paced", QuestionWeightInputs(torch.tensor([1]), torch.tensor([0])))


def test_the_question_weighting_registry_lists_its_names():
    assert QUESTION_WEIGHTINGS.names() == ["hard_filter", "paced", "pass_rate"]
    with pytest.raises(UnknownNameError, match="valid question weightings: hard_filter, paced, pass_rate"):
        question_weights("variance", QuestionWeightInputs(torch.tensor([1]), torch.tensor([0])))


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_question_weights_permute_with_the_rows(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 20)
    ids, success = torch.tensor(group_ids(rng, n)), torch.tensor([rng.random() < 0.5 for _ in range(n)])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for name in ("pass_rate", "hard_filter"):
        w = question_weights(name, QuestionWeightInputs(success, ids))
        w_perm = question_weights(name, QuestionWeightInputs(success[perm], ids[perm]))
        close(w_perm, w[perm])


# -------------------------------------------------------------------------------------------- SCOPE


SWITCH_GRID = [
    ScopeSwitches(),
    ScopeSwitches(tau=0.5, normalization="sum1"),
    ScopeSwitches(student_exponent=-1.0, teacher_exponent=-1.0, tau=2.0),  # released_scripts signs
    ScopeSwitches(use_seq_weights=False),
    ScopeSwitches(use_student_weights=False),
    ScopeSwitches(use_teacher_weights=False),
    ScopeSwitches(dual_path=False),
]


def _scope_case(rng: random.Random):
    n, t = rng.randint(2, 14), rng.randint(1, 6)
    ids = group_ids(rng, n)
    success = [rng.random() < 0.5 for _ in range(n)]
    valid = [rng.random() < 0.75 for _ in range(n)]
    mask = ragged_mask(rng, n, t)
    old, teacher = log_probs(rng, n, t).float(), log_probs(rng, n, t).float()
    teacher[~torch.tensor(valid)] = float("nan")  # scores that never arrived
    return old, teacher, mask, success, ids, valid


@pytest.mark.parametrize("sw", SWITCH_GRID, ids=lambda s: f"{s}")
@pytest.mark.parametrize("seed", SEEDS)
def test_scope_path_weights_match_loop_reference(seed, sw):
    old, teacher, mask, success, ids, valid = _scope_case(random.Random(seed))
    paths = scope_path_weights(
        old, teacher, torch.tensor(mask), torch.tensor(success), torch.tensor(ids),
        valid_N=torch.tensor(valid), switches=sw,
    )  # fmt: skip
    student, teach, on_mle = scope_rows(old.tolist(), teacher.tolist(), mask, success, ids, valid, sw)
    close(paths.weights.student_N, student)
    close(paths.weights.teacher_N, teach)
    assert paths.correct_N.tolist() == on_mle
    assert paths.valid_N.tolist() == valid
    assert torch.isfinite(paths.weights.teacher_N).all()


def test_scope_path_weights_hand_case_with_an_unscored_row():
    # One group: correct rows 0, 1 with ℓS = −0.1, −1.0; wrong rows 2, 3 with ℓT = −0.5, −2.0; wrong row 4
    # unscored (NaN). Paper signs, τ = 1, mean1:
    #   student ∝ PPL_S^{+1} = exp(−ℓS): 2·softmax(0.1, 1.0) = (2/(1+e^0.9), 2e^0.9/(1+e^0.9))
    #   = (0.5784, 1.4216)
    #   teacher ∝ PPL_T^{−1} = exp(ℓT) over the SCORED wrong rows only: 2·softmax(−0.5, −2.0)
    #   = (2/(1+e^−1.5), 2e^−1.5/(1+e^−1.5)) = (1.6351, 0.3649); the unscored row gets 0 (and the path has
    #   2 members, not 3: it would otherwise shrink the others by 2/3 and count as a perfect teacher, §5.7).
    mask = torch.ones(5, 2, dtype=torch.bool)
    old = torch.tensor([[-0.1, -0.1], [-1.0, -1.0], [-3.0, -3.0], [-3.0, -3.0], [-3.0, -3.0]])
    teacher = torch.tensor([[-9.0, -9.0], [-9.0, -9.0], [-0.5, -0.5], [-2.0, -2.0], [math.nan, math.nan]])
    success = torch.tensor([True, True, False, False, False])
    paths = scope_path_weights(old, teacher, mask, success, torch.zeros(5, dtype=torch.int64))
    e9, e15 = math.exp(0.9), math.exp(-1.5)
    close(paths.weights.student_N, [2 / (1 + e9), 2 * e9 / (1 + e9), 0, 0, 0])
    close(paths.weights.teacher_N, [0, 0, 2 / (1 + e15), 2 * e15 / (1 + e15), 0])
    assert paths.valid_N.tolist() == [True] * 4 + [False]  # found from the NaN scores (no valid_N given)
    off = scope_path_weights(
        old,
        teacher,
        mask,
        success,
        torch.zeros(5, dtype=torch.int64),
        switches=ScopeSwitches(dual_path=False),
    )
    assert off.weights.teacher_N.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]  # plain OPD: every SCORED row
    assert off.correct_N.tolist() == [False] * 5


@pytest.mark.parametrize("sw", SWITCH_GRID, ids=lambda s: f"{s}")
@pytest.mark.parametrize("seed", SEEDS[:6])
def test_unscored_rows_get_zero_and_change_nothing(seed, sw):
    old, teacher, mask, success, ids, valid = _scope_case(random.Random(seed))
    args = (torch.tensor(mask), torch.tensor(success), torch.tensor(ids))
    full = scope_path_weights(old, teacher, *args, valid_N=torch.tensor(valid), switches=sw)
    unscored_wrong = torch.tensor([not s and not v for s, v in zip(success, valid)])
    assert (full.weights.teacher_N[unscored_wrong] == 0).all()
    assert (full.weights.student_N[unscored_wrong] == 0).all()
    # whatever the unscored rows hold (NaN, 0 = "perfect teacher", −1e9), the weights are the same
    for fill in (0.0, -1e9):
        filled = torch.where(torch.tensor(valid).unsqueeze(-1), teacher, torch.full_like(teacher, fill))
        again = scope_path_weights(old, filled, *args, valid_N=torch.tensor(valid), switches=sw)
        torch.testing.assert_close(again.weights.teacher_N, full.weights.teacher_N)
        torch.testing.assert_close(again.weights.student_N, full.weights.student_N)
    # dropping the unscored wrong rows leaves every other row's weights as they were
    keep = (~unscored_wrong).nonzero().squeeze(-1)
    sub = scope_path_weights(
        old[keep], teacher[keep], args[0][keep], args[1][keep], args[2][keep],
        valid_N=torch.tensor(valid)[keep], switches=sw,
    )  # fmt: skip
    torch.testing.assert_close(sub.weights.teacher_N, full.weights.teacher_N[keep])
    torch.testing.assert_close(sub.weights.student_N, full.weights.student_N[keep])


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_scope_path_weights_permute_with_the_rows(seed):
    old, teacher, mask, success, ids, valid = _scope_case(random.Random(seed))
    n = len(ids)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    m, s, g, v = torch.tensor(mask), torch.tensor(success), torch.tensor(ids), torch.tensor(valid)
    full = scope_path_weights(old, teacher, m, s, g, valid_N=v)
    permuted = scope_path_weights(old[perm], teacher[perm], m[perm], s[perm], g[perm], valid_N=v[perm])
    torch.testing.assert_close(permuted.weights.student_N, full.weights.student_N[perm])
    torch.testing.assert_close(permuted.weights.teacher_N, full.weights.teacher_N[perm])


def test_rows_with_teacher_scores_look_at_valid_tokens_only():
    teacher = torch.tensor([[-1.0, math.nan], [math.nan, -1.0], [-1.0, -math.inf]])
    mask = torch.tensor([[1, 0], [1, 1], [1, 1]])
    # row 0: the NaN is padding -> scored; row 1: NaN on a valid token -> unscored; row 2: −inf -> unscored
    assert rows_with_teacher_scores(teacher, mask).tolist() == [True, False, False]


def test_scope_exponents_presets_and_overrides():
    assert scope_exponents("paper") == (1.0, -1.0)
    assert scope_exponents("released_scripts") == (-1.0, -1.0)
    assert scope_exponents("paper", None, 0.5) == (1.0, 0.5)
    with pytest.raises(ValueError, match="valid: paper, released_scripts"):
        scope_exponents("inverted")


def test_scope_mle_scale_turns_one_token_mean_into_two():
    # rows of 3, 2 (correct) and 4, 3 (wrong) tokens: all = 12, correct = 5 -> "code" factor 12/5
    mask = torch.arange(4).unsqueeze(0) < torch.tensor([3, 2, 4, 3]).unsqueeze(-1)
    correct = torch.tensor([True, True, False, False])
    assert scope_mle_scale(mask, correct, "code") == pytest.approx(2.4)
    assert scope_mle_scale(mask, correct, "joint") == 1.0
    assert scope_mle_scale(mask, torch.zeros(4, dtype=torch.bool), "code") == 1.0


# ---------------------------------------------------------------------------------------------- SRPO


@pytest.mark.parametrize("seed", SEEDS)
def test_srpo_entropy_weights_match_loop_reference(seed):
    rng = random.Random(seed)
    n, t = rng.randint(1, 10), rng.randint(1, 6)
    ids, success = group_ids(rng, n), [rng.random() < 0.5 for _ in range(n)]
    context = [rng.random() < 0.8 for _ in range(n)]
    mask = ragged_mask(rng, n, t)
    entropy = (-log_probs(rng, n, t)).float()
    routing = srpo_routing(torch.tensor(success), torch.tensor(ids), context_N=torch.tensor(context))
    sdpo = [r and c for r, c in zip(ref.srpo_routing(success, ids), context)]
    assert routing.sdpo_N.tolist() == sdpo and routing.grpo_N.tolist() == [not x for x in sdpo]
    w = srpo_entropy_weights(entropy, torch.tensor(mask), routing.sdpo_N, beta=0.7)
    routed_mask = [[m if sdpo[i] else 0 for m in row] for i, row in enumerate(mask)]
    close(w, ref.entropy_weights(entropy.tolist(), routed_mask, beta=0.7))


def test_srpo_entropy_weights_hand_case():
    # Row 0 routed with entropies (0, ln 3), β = 1: exp(−βH) = (1, 1/3), mean 2/3 -> (1.5, 0.5); row 1 (GRPO
    # branch) gets 0 on every token.
    entropy = torch.tensor([[0.0, math.log(3.0)], [0.2, 0.2]])
    w = srpo_entropy_weights(entropy, torch.ones(2, 2), torch.tensor([True, False]))
    close(w, [[1.5, 0.5], [0.0, 0.0]])


def test_switch_grid_covers_every_switch():
    # every boolean switch of ScopeSwitches is off in some row of the grid, so no ablation goes untested
    flags = ("dual_path", "use_seq_weights", "use_student_weights", "use_teacher_weights")
    assert all(any(not getattr(sw, f) for sw in SWITCH_GRID) for f in flags)
    assert {sw.normalization for sw in SWITCH_GRID} == {"mean1", "sum1"}
    assert {sw.student_exponent for sw in SWITCH_GRID} == {1.0, -1.0}
