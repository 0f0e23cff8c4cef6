"""Aggregation, clipped surrogate, IS weights and the MLE term (docs/algorithms.md §2.2, §2.3, §2.6, §3.4)."""

import math
import random

import core_reference as ref
import pytest
import torch
from core_inputs import SEEDS, close, log_probs, normal, ragged_mask, shapes

from opdkit.core.losses import (
    aggregate,
    aggregation_denominator,
    clipped_policy_loss,
    clipped_surrogate,
    mle_loss,
    truncated_is_weight,
)

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
DENOMINATORS = ["valid", "per_sequence_all"]


def _coefficients(mask: list[list[int]], mode: str, norm_length, denominator: str) -> list[list[float]]:
    """∂ agg / ∂ ℓ[i,t] from the loop reference: every mode is linear in ℓ, so the coefficient of token (i,t)
    is the reference applied to the one-hot loss e_(i,t)."""
    n, t = len(mask), len(mask[0])
    coef = []
    for i in range(n):
        row = []
        for j in range(t):
            onehot = [[float(a == i and b == j) for b in range(t)] for a in range(n)]
            row.append(ref.aggregate(onehot, mask, mode, norm_length, denominator))
        coef.append(row)
    return coef


@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_aggregate_matches_loop_reference(seed, mode, denominator):
    rng = random.Random(seed)
    n, t = shapes(rng)
    mask = ragged_mask(rng, n, t, holes=seed % 3 == 0)
    norm_length = rng.choice([None, t + 3])
    loss = normal(rng, n, t).requires_grad_(True)
    if not _counts_sequences(mode, denominator):
        with pytest.raises(ValueError, match="only applies to the seq-mean modes"):
            aggregate(loss, torch.tensor(mask), mode, norm_length=norm_length, denominator=denominator)
        return
    out = aggregate(loss, torch.tensor(mask), mode, norm_length=norm_length, denominator=denominator)
    assert out.dim() == 0
    close(out, ref.aggregate(loss.tolist(), mask, mode, norm_length, denominator), tol=1e-6)
    out.backward()
    close(loss.grad, _coefficients(mask, mode, norm_length, denominator), tol=1e-6)


def _counts_sequences(mode: str, denominator: str) -> bool:
    """``per_sequence_all`` counts sequences, so it is only accepted by the two seq-mean modes (§11 A8)."""
    return denominator == "valid" or mode in ("seq-mean-token-sum", "seq-mean-token-mean")


def test_aggregate_hand_cases():
    # ℓ = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], M = [[1, 1, 0], [1, 0, 0], [0, 0, 0]] (row 3 fully masked).
    # token-mean:               (1 + 2 + 4)/3 = 7/3
    # seq-mean-token-sum:       N_s = 2 rows with a valid token: (3 + 4)/2 = 3.5;  all rows: 7/3
    # seq-mean-token-mean:      (3/2 + 4/1)/2 = 2.75;                              all rows: 5.5/3
    # seq-mean-token-sum-norm:  Σ M·ℓ/(B·L_norm) with B = 3 (every row): L_norm = 4 -> 7/12;
    #                           L_norm defaults to the padded length T = 3 -> 7/9
    loss = torch.arange(1.0, 10.0).reshape(3, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    expected = {
        ("token-mean", "valid"): 7 / 3,
        ("seq-mean-token-sum", "valid"): 3.5,
        ("seq-mean-token-sum", "per_sequence_all"): 7 / 3,
        ("seq-mean-token-mean", "valid"): 2.75,
        ("seq-mean-token-mean", "per_sequence_all"): 5.5 / 3,
    }
    for (mode, denominator), value in expected.items():
        assert float(aggregate(loss, mask, mode, denominator=denominator)) == pytest.approx(value, rel=1e-6)
    assert float(aggregate(loss, mask, "seq-mean-token-sum-norm", norm_length=4)) == pytest.approx(7 / 12)
    assert float(aggregate(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(7 / 9)


@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS[:6])
def test_micro_batches_with_the_global_denominator_sum_to_the_whole_batch(seed, mode, denominator):
    # §2.3 "denominator scope": split the rows into micro-batches, aggregate each with the whole batch's
    # denominator and add them up; the result must equal one aggregate over the whole batch.
    if not _counts_sequences(mode, denominator):
        return  # rejected, see test_aggregate_matches_loop_reference
    rng = random.Random(seed)
    n, t = rng.randint(2, 12), rng.randint(1, 6)
    mask = torch.tensor(ragged_mask(rng, n, t, holes=seed % 2 == 0))
    loss = normal(rng, n, t)
    norm_length = rng.choice([None, t + 2])
    whole = aggregate(loss, mask, mode, norm_length=norm_length, denominator=denominator)
    den = aggregation_denominator(mask, mode, norm_length=norm_length, denominator=denominator)
    cuts = sorted(rng.sample(range(1, n), rng.randint(1, n - 1)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # micro-batches in any order
    total = torch.zeros((), dtype=torch.float64)
    for lo, hi in zip([0, *cuts], [*cuts, n]):
        rows = perm[lo:hi]
        total = total + aggregate(
            loss[rows],
            mask[rows],
            mode,
            norm_length=norm_length,
            denominator=denominator,
            global_denominator=den,
        )
    close(total, whole, tol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_empty_mask_is_zero_and_garbage_under_the_mask_is_ignored(mode):
    # §4.7: an empty loss mask gives loss 0 (the count is clamped to 1), with zero gradient.
    loss = torch.full((2, 3), 5.0, requires_grad=True)
    out = aggregate(loss, torch.zeros(2, 3), mode)
    assert out.item() == 0.0
    out.backward()
    assert not loss.grad.any()
    # NaN / ±inf under the mask change neither the value nor the gradient.
    clean = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]], requires_grad=True)
    dirty = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), -float("inf")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a, b = aggregate(clean, mask, mode), aggregate(dirty, mask, mode)
    assert a.item() == b.item()
    a.backward()
    b.backward()
    assert torch.equal(clean.grad, dirty.grad)


def test_aggregate_rejects_unknown_mode_and_denominator():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "token-sum")
    with pytest.raises(ValueError, match="per_sequence_all"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "token-mean", denominator="global")


# --------------------------------------------------------------------------------------- clipped surrogate


def _surrogate_case(rng: random.Random, n: int, t: int):
    logp = log_probs(rng, n, t)
    # ratios spread over ~[0.3, 3] so every clip branch (and the dual clip) occurs
    old = (logp + normal(rng, n, t, scale=0.6)).clamp(max=0.0)
    adv = normal(rng, n, t, scale=1.5)
    return logp, old, adv


@pytest.mark.parametrize("seed", SEEDS)
def test_clipped_surrogate_matches_loop_reference(seed):
    rng = random.Random(seed)
    n, t = shapes(rng)
    logp, old, adv = _surrogate_case(rng, n, t)
    clip_low, clip_high = rng.choice([(0.2, 0.28), (0.2, 0.2), (0.1, 0.5)])
    dual = rng.choice([3.0, None, 1.5])
    if seed % 2:  # (N,) advantages broadcast to every token
        adv = adv[:, 0]
    adv_rows = adv.unsqueeze(-1).expand(n, t) if adv.dim() == 1 else adv
    logp = logp.clone().requires_grad_(True)
    sur = clipped_surrogate(logp, old, adv, clip_low=clip_low, clip_high=clip_high, dual_clip=dual)
    cases = [
        [ref.surrogate(a, b, c, clip_low, clip_high, dual) for a, b, c in zip(*rows)]
        for rows in zip(logp.tolist(), old.tolist(), adv_rows.tolist())
    ]
    close(sur.loss_N_T, [[c[0] for c in row] for row in cases])
    assert sur.clipped_N_T.tolist() == [[c[1] for c in row] for row in cases]
    assert sur.dual_clipped_N_T.tolist() == [[c[2] for c in row] for row in cases]
    close(sur.ratio_N_T, (logp - old).exp())
    sur.loss_N_T.sum().backward()
    grads = [
        [ref.surrogate_grad(a, b, c, clip_low, clip_high, dual) for a, b, c in zip(*rows)]
        for rows in zip(logp.tolist(), old.tolist(), adv_rows.tolist())
    ]
    close(logp.grad, grads)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("seed", SEEDS)
def test_clipped_policy_loss_matches_loop_reference_with_metrics(seed, mode):
    rng = random.Random(seed)
    n, t = shapes(rng)
    logp, old, adv = _surrogate_case(rng, n, t)
    mask = ragged_mask(rng, n, t)
    out = clipped_policy_loss(logp, old, adv, torch.tensor(mask), mode=mode)
    cases = [
        [ref.surrogate(a, b, c) for a, b, c in zip(*rows)]
        for rows in zip(logp.tolist(), old.tolist(), adv.tolist())
    ]
    per_token = [[c[0] for c in row] for row in cases]
    close(out.loss, ref.aggregate(per_token, mask, mode))
    valid = [(i, j) for i in range(n) for j in range(t) if mask[i][j]]
    count = max(len(valid), 1)
    assert out.metrics["clipfrac"] == pytest.approx(sum(cases[i][j][1] for i, j in valid) / count)
    assert out.metrics["clipfrac_lower"] == pytest.approx(sum(cases[i][j][2] for i, j in valid) / count)
    ratio = sum(math.exp(logp[i, j] - old[i, j]) for i, j in valid) / count
    assert out.metrics["ratio_mean"] == pytest.approx(ratio, rel=1e-5)
    approx_kl = sum(float(old[i, j] - logp[i, j]) for i, j in valid) / count
    assert out.metrics["approx_kl"] == pytest.approx(approx_kl, rel=1e-5, abs=1e-6)


def test_clipped_policy_loss_hand_case():
    # ε_low = 0.2, ε_high = 0.28, dual clip c = 3 (§2.2); one row of five valid tokens:
    #  (a) A = +1, ratio 1.5: max(−1.5, −1·1.28) = −1.28        clipped (upper), gradient 0
    #  (b) A = +1, ratio 0.5: max(−0.5, −1·0.8)  = −0.5         unclipped, ∂/∂logp = −A·ratio = −0.5
    #  (c) A = −1, ratio 0.5: max(0.5, 0.8) = 0.8; min(0.8, 3) clipped (lower), gradient 0
    #  (d) A = −1, ratio 5:   max(5, 1.28) = 5; min(5, 3) = 3    dual-clipped, gradient 0
    #  (e) A = −2, ratio 1.1: max(2.2, 2.2) = 2.2; min(2.2, 6)   unclipped, ∂/∂logp = −A·ratio = 2.2
    # token-mean = (−1.28 − 0.5 + 0.8 + 3 + 2.2)/5 = 4.22/5 = 0.844; ∂/∂logp = (0, −0.1, 0, 0, 0.44).
    # clipfrac: clipped > unclipped at (a), (c) -> 2/5; clipfrac_lower: dual clip active at (d) -> 1/5.
    # A sixth, masked token holds garbage and must not count anywhere.
    ratio = torch.tensor([[1.5, 0.5, 0.5, 5.0, 1.1, 1e6]])
    old = torch.full((1, 6), -1.0)
    logp = (old + ratio.log()).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -2.0, -1e9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    out = clipped_policy_loss(logp, old, adv, mask)
    assert out.loss.item() == pytest.approx(0.844, rel=1e-6)
    out.loss.backward()
    close(logp.grad, [[0.0, -0.1, 0.0, 0.0, 0.44, 0.0]], tol=1e-6)
    assert out.metrics["clipfrac"] == pytest.approx(0.4)
    assert out.metrics["clipfrac_lower"] == pytest.approx(0.2)
    # on-policy (old = sg(logp)): ratio ≡ 1, no clipping, gradient −A (§2.2)
    on = clipped_policy_loss(logp, logp.detach(), adv, mask)
    (grad,) = torch.autograd.grad(on.loss, logp)
    close(grad, [[-0.2, -0.2, 0.2, 0.2, 0.4, 0.0]], tol=1e-6)
    assert on.metrics["clipfrac"] == 0.0 and on.metrics["ratio_mean"] == pytest.approx(1.0)


def test_extreme_log_ratios_are_clamped():
    # ratio = exp(clamp(logp − old, −20, 20)): a log-ratio of 60 gives e^20, not inf; with A = +1 the clip
    # caps the loss at −1.28, with A = −1 the dual clip at 3.
    logp, old = torch.tensor([[0.0, 0.0]]), torch.tensor([[-60.0, -60.0]])
    sur = clipped_surrogate(logp, old, torch.tensor([[1.0, -1.0]]))
    close(sur.ratio_N_T, [[math.exp(20.0)] * 2], tol=1e-6)
    close(sur.loss_N_T, [[-1.28, 3.0]])


# ----------------------------------------------------------------------------------- IS weight and MLE


@pytest.mark.parametrize("seed", SEEDS)
def test_truncated_is_weight_matches_loop_reference(seed):
    rng = random.Random(seed)
    n, t = shapes(rng)
    num = log_probs(rng, n, t).requires_grad_(True)
    den = log_probs(rng, n, t)
    for cap in (2.0, 1.0, None):
        w = truncated_is_weight(num, den, cap=cap)
        expected = [
            [ref.truncated_is(a, b, cap) for a, b in zip(*rows)] for rows in zip(num.tolist(), den.tolist())
        ]
        close(w, expected)
        assert not w.requires_grad  # detached (§3.4)
    close(
        truncated_is_weight(torch.tensor([30.0, -30.0]), torch.zeros(2), cap=1e12),
        [math.exp(20), math.exp(-20)],
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_mle_loss_matches_loop_reference(seed):
    # §5.5 MLE path: −w_i·logp[i,t], aggregated; the weight is a constant.
    rng = random.Random(seed)
    n, t = shapes(rng)
    logp = log_probs(rng, n, t).requires_grad_(True)
    weights = normal(rng, n).abs().requires_grad_(True)
    mask = ragged_mask(rng, n, t)
    mode = rng.choice(MODES)
    out = mle_loss(logp, weights, torch.tensor(mask), mode=mode)
    per_token = [[-w * x for x in row] for w, row in zip(weights.tolist(), logp.tolist())]
    close(out.loss, ref.aggregate(per_token, mask, mode))
    out.loss.backward()
    coef = _coefficients(mask, mode, None, "valid")
    close(logp.grad, [[-w * c for c in row] for w, row in zip(weights.tolist(), coef)])
    assert weights.grad is None or not weights.grad.any()
