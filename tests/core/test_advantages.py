"""GRPO and OPD advantages (§1, §2.1, §3.1) against loop references and hand-derived values."""

import math
import random

import pytest
import torch
from core_inputs import SEEDS, binary, close, group_ids, log_probs, ragged_mask, shapes
from core_reference import grpo, opd, pass_rates

from opdkit.core.advantages import group_pass_rates, grpo_advantages, opd_advantages


@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_matches_loop_reference(seed, normalize_std):
    rng = random.Random(seed)
    n = rng.randint(1, 24)
    ids = group_ids(rng, n)
    # Binary rewards on even seeds, continuous ones on odd seeds (GRPO keeps raw r, §1.4).
    rewards = binary(rng, n) if seed % 2 == 0 else [rng.uniform(-2, 3) for _ in range(n)]
    actual = grpo_advantages(torch.tensor(rewards), torch.tensor(ids), normalize_std=normalize_std)
    assert actual.shape == (n,)
    close(actual, grpo(rewards, ids, normalize_std), tol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_pass_rates_matches_loop_reference(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 24)
    ids, success = group_ids(rng, n), binary(rng, n)
    close(group_pass_rates(torch.tensor(success), torch.tensor(ids)), pass_rates(success, ids))
    # bool successes are accepted as well
    close(group_pass_rates(torch.tensor(success).bool(), torch.tensor(ids)), pass_rates(success, ids))


@pytest.mark.parametrize("discount", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_opd_advantages_match_loop_reference(seed, discount):
    rng = random.Random(seed)
    n, t = shapes(rng)
    old, teacher = log_probs(rng, n, t), log_probs(rng, n, t)
    mask = ragged_mask(rng, n, t)
    coef = rng.choice([1.0, 0.5])
    actual = opd_advantages(old, teacher, torch.tensor(mask), coef=coef, discount=discount)
    close(actual, opd(old.tolist(), teacher.tolist(), mask, coef, discount))


def test_opd_advantage_hand_computed():
    # One row, tokens (logp_old, logp_T) = (−1, −0.5), (−2, −3), padding. §3.1: A = −(old − T):
    # A_1 = −(−1 + 0.5) = 0.5, A_2 = −(−2 + 3) = −1. With γ = 0.5 the discounted sum gives
    # A_1 = 0.5 + 0.5·(−1) = 0, A_2 = −1; padding stays 0 even though it holds NaN.
    old = torch.tensor([[-1.0, -2.0, float("nan")]])
    teacher = torch.tensor([[-0.5, -3.0, float("nan")]])
    mask = torch.tensor([[1, 1, 0]])
    close(opd_advantages(old, teacher, mask), [[0.5, -1.0, 0.0]])
    close(opd_advantages(old, teacher, mask, discount=0.5), [[0.0, -1.0, 0.0]])
    close(opd_advantages(old, teacher, mask, coef=2.0), [[1.0, -2.0, 0.0]])


@pytest.mark.parametrize(("n", "k"), [(8, 1), (8, 3), (8, 4), (8, 7), (5, 2), (2, 1), (16, 9)])
def test_grpo_binary_identities(n, k):
    # §2.1: with k of n correct, p = k/n and the unbiased std σ = sqrt(n p(1−p)/(n−1)).
    # Correct rows: A+ = (1 − p)/σ; wrong rows: A− = −p/σ; Σ|A| = k(1−p)/σ + (n−k)p/σ = 2n p(1−p)/σ.
    # E.g. n = 8, k = 3: σ = sqrt(8·(3/8)(5/8)/7) = sqrt(15/56) = 0.51755, A+ = 0.625/0.51755 = 1.20761,
    # A− = −0.375/0.51755 = −0.72457, Σ|A| = 3.75/0.51755 = 7.24569. ε = 1e-6 shifts these by ~2e-6 relative.
    p = k / n
    sigma = math.sqrt(n * p * (1 - p) / (n - 1))
    # Interleave the group with another group (id −5) so it is not contiguous.
    rewards = [1.0] * k + [0.0] * (n - k)
    ids = [42] * n
    rewards_all = [x for r in rewards for x in (r, 0.5)]
    ids_all = [x for i in ids for x in (i, -5)]
    adv = grpo_advantages(torch.tensor(rewards_all), torch.tensor(ids_all))[0::2]
    assert adv[:k].tolist() == pytest.approx([(1 - p) / sigma] * k, rel=1e-5)
    assert adv[k:].tolist() == pytest.approx([-p / sigma] * (n - k), rel=1e-5)
    assert float(adv.abs().sum()) == pytest.approx(2 * n * p * (1 - p) / sigma, rel=1e-5)
    if (n, k) == (8, 3):
        assert float(adv[0]) == pytest.approx(1.20761, abs=1e-4)
        assert float(adv[-1]) == pytest.approx(-0.72457, abs=1e-4)
        assert float(adv.abs().sum()) == pytest.approx(7.24569, abs=1e-4)
    # Without std normalisation: A+ = 1 − p, A− = −p.
    raw = grpo_advantages(torch.tensor(rewards_all), torch.tensor(ids_all), normalize_std=False)[0::2]
    assert raw[:k].tolist() == pytest.approx([1 - p] * k, rel=1e-6)
    assert raw[k:].tolist() == pytest.approx([-p] * (n - k), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_degenerate_groups_give_zero_and_singletons_give_r(normalize_std):
    # Degenerate groups (all 1 or all 0): numerator r − mean = 0 exactly, so A = 0 (§2.1).
    # Singletons: mean 0 and std 1, so A = r/(1 + ε) ≈ r (normalised) or exactly r (§1.6).
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.7, 0.0])
    ids = torch.tensor([3, 9, 3, 9, 3, 100, 2**40])
    adv = grpo_advantages(rewards, ids, normalize_std=normalize_std)
    assert adv[:5].tolist() == [0.0] * 5
    assert adv[5:].tolist() == pytest.approx([0.7, 0.0], rel=1e-5)
    assert torch.isfinite(adv).all()


def test_group_functions_accept_an_empty_batch():
    empty_f, empty_i = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    assert grpo_advantages(empty_f, empty_i).shape == (0,)
    assert group_pass_rates(empty_f, empty_i).shape == (0,)


def test_opd_advantages_floor_minus_inf_teacher_logprobs():
    # logp_old = −1, logp_T = −inf on a valid token: with the §5.7 floor, A = −(−1 − (−1e4)) = −9999 (finite).
    adv = opd_advantages(torch.tensor([[-1.0]]), torch.tensor([[-float("inf")]]), torch.ones(1, 1))
    assert adv.tolist() == [[pytest.approx(-9999.0)]]
