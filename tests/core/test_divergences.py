"""Divergences, top-k supports and KL estimators (docs/algorithms.md §2.4, §3.1-§3.3, §7.4)."""

import math
import random

import core_reference as ref
import pytest
import torch
from core_inputs import SEEDS, close, normal

from opdkit.core.divergences import (
    distillation_token_loss,
    entropy_from_logits,
    kl_estimate,
    sampled_token_distill_loss,
    teacher_support_logp,
    token_divergence,
    topk_with_tail,
)

ALPHAS = [0.0, 1.0, 0.5, 0.1, 0.9, 0.3]
NEG_INF = float("-inf")


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(-1, x.shape[-1]).tolist()


def _random_pair(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits (B, L, V) with spread 0.5..2.5 (peaked and flat distributions).

    Not more peaked than that: the library works in float32 and forms the tail bucket as
    log(−expm1(logsumexp_k)) (§3.3 step 4), whose absolute error is ~6e-8 / tail mass, so a student tail of
    1e-6 is only good to ~5% in log space; comparisons at 1e-5 need tail masses above ~1e-3."""
    shape = (rng.randint(1, 3), rng.randint(1, 4), rng.randint(2, 12))
    return normal(rng, *shape, scale=rng.uniform(0.5, 2.5)), normal(rng, *shape, scale=rng.uniform(0.5, 2.5))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_token_divergence_matches_loop_reference(seed, alpha):
    rng = random.Random(seed)
    zs, zt = _random_pair(rng)
    s, t = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    d = token_divergence(s, t, alpha=alpha)
    assert d.shape == zs.shape[:-1]
    expected = [ref.divergence(a, b, alpha) for a, b in zip(_rows(s), _rows(t))]
    close(d.reshape(-1), expected)


def test_token_divergence_endpoints_are_the_named_kls_and_jsd_hand_case():
    # Two categories, S = (1/2, 1/2), T = (1/4, 3/4) (§3.2):
    # KL(T‖S) = ¼ ln(½) + ¾ ln(3/2) = −0.173287 + 0.304099 = 0.130812      (α = 0, forward)
    # KL(S‖T) = ½ ln 2 + ½ ln(2/3) = 0.346574 − 0.202733 = 0.143841        (α = 1, reverse)
    # α = 0.5: M = (3/8, 5/8); D = ½[½ ln(4/3) + ½ ln(4/5)] + ½[¼ ln(2/3) + ¾ ln(6/5)]
    #        = ½[0.143841 − 0.111572] + ½[−0.101366 + 0.136740] = 0.016135 + 0.017687 = 0.033822
    s = torch.log(torch.tensor([0.5, 0.5]))
    t = torch.log(torch.tensor([0.25, 0.75]))
    fwd = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    rev = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    jsd = 0.5 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)) + 0.5 * (
        0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5)
    )
    assert (fwd, rev, jsd) == pytest.approx((0.130812, 0.143841, 0.033822), abs=1e-6)
    assert float(token_divergence(s, t, alpha=0.0)) == pytest.approx(fwd, abs=1e-6)
    assert float(token_divergence(s, t, alpha=1.0)) == pytest.approx(rev, abs=1e-6)
    assert float(token_divergence(s, t, alpha=0.5)) == pytest.approx(jsd, abs=1e-6)
    # The endpoints are not the limit of the JSD formula (which tends to 0), they are the KLs themselves.
    assert float(token_divergence(s, t, alpha=1e-6)) == pytest.approx(0.0, abs=1e-5)


def test_token_divergence_rejects_alpha_outside_unit_interval():
    s = torch.log_softmax(torch.zeros(3), -1)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            token_divergence(s, s, alpha=alpha)


def _sorted_pair(s_k: torch.Tensor, t_k: torch.Tensor, has_tail: bool):
    """Rows of (student, teacher) pairs ordered by student value (the spec fixes the support, not its order);
    the tail bucket stays last."""
    out_s, out_t = [], []
    for srow, trow in zip(_rows(s_k), _rows(t_k)):
        body = list(zip(srow[:-1], trow[:-1])) if has_tail else list(zip(srow, trow))
        body.sort(key=lambda x: -x[0])
        out_s.append([a for a, _ in body] + ([srow[-1]] if has_tail else []))
        out_t.append([b for _, b in body] + ([trow[-1]] if has_tail else []))
    return out_s, out_t


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_topk_with_tail_matches_loop_reference(seed, tail):
    rng = random.Random(seed)
    zs, zt = _random_pair(rng)
    v = zs.shape[-1]
    k = rng.randint(1, v - 1) if seed % 3 else v - 1
    pair = topk_with_tail(zs, zt, k=k, tail=tail)
    assert pair.student.shape == (*zs.shape[:-1], k + int(tail))
    assert pair.teacher.shape == pair.student.shape
    got_s, got_t = _sorted_pair(pair.student, pair.teacher, tail)
    exp = [ref.topk_with_tail(a, b, k, tail) for a, b in zip(_rows(zs), _rows(zt))]
    close(torch.tensor(got_s), [e[0] for e in exp])
    close(torch.tensor(got_t), [e[1] for e in exp])
    # Each row is a distribution over K+1 (tail) or K (renormalised) categories (§3.3).
    close(pair.student.exp().sum(-1), torch.ones(zs.shape[:-1]))
    close(pair.teacher.exp().sum(-1), torch.ones(zs.shape[:-1]))


def test_topk_uses_the_students_support_and_no_gradient_reaches_the_teacher():
    # Student prefers ids 3, 0; the teacher prefers 1, 2. The support must be {3, 0} (§3.3 step 1).
    zs = torch.tensor([[2.0, -1.0, -2.0, 3.0]], requires_grad=True)
    zt = torch.tensor([[-3.0, 4.0, 3.0, -1.0]], requires_grad=True)
    pair = topk_with_tail(zs, zt, k=2, tail=True)
    log_zs, log_zt = torch.log_softmax(zs.detach(), -1)[0], torch.log_softmax(zt.detach(), -1)[0]
    close(pair.student[0, :2].sort().values, log_zs[[0, 3]].sort().values)
    close(pair.teacher[0, :2].sort().values, log_zt[[0, 3]].sort().values)
    # tail = log(1 − p_0 − p_3) for each distribution
    close(pair.teacher[0, 2], math.log(1 - log_zt[[0, 3]].exp().sum().item()))
    token_divergence(pair.student, pair.teacher, alpha=0.5).sum().backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all()
    assert zt.grad is None or not zt.grad.any()


@pytest.mark.parametrize("seed", SEEDS)
def test_teacher_support_logp_matches_loop_reference(seed):
    rng = random.Random(seed)
    n, t, v = rng.randint(1, 3), rng.randint(1, 4), rng.randint(3, 12)
    k = rng.randint(1, v)
    zs = normal(rng, n, t, v, scale=2)
    ids = torch.stack([torch.randperm(v, generator=torch.Generator().manual_seed(seed * 100 + i))[:k]
                       for i in range(n * t)]).reshape(n, t, k)  # fmt: skip
    # a server returns full-vocabulary log-probs of its top-K (they do not sum to 1 over K)
    t_logp = torch.log_softmax(normal(rng, n, t, v, scale=2), -1).gather(-1, ids)
    pair = teacher_support_logp(zs, ids, t_logp)
    exp = [ref.teacher_support(a, [int(x) for x in i], b)
           for a, i, b in zip(_rows(zs), _rows(ids), _rows(t_logp))]  # fmt: skip
    close(pair.student.reshape(-1, k), [e[0] for e in exp])
    close(pair.teacher.reshape(-1, k), [e[1] for e in exp])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", SEEDS[:6])
def test_distillation_token_loss_matches_composed_reference(seed, alpha):
    # §4.7: divergence over the top-k (+tail) support, or the full vocabulary when top_k is None.
    rng = random.Random(seed)
    zs, zt = _random_pair(rng)
    v = zs.shape[-1]
    k = rng.randint(1, v)
    for top_k, tail in [(None, True), (k, True), (k, False)]:
        loss = distillation_token_loss(zs, zt, alpha=alpha, top_k=top_k, tail=tail)
        expected = []
        for a, b in zip(_rows(zs), _rows(zt)):
            if top_k is None:
                s, t = ref.log_softmax(a), ref.log_softmax(b)
            else:
                s, t = ref.topk_with_tail(a, b, k, tail)
                if tail and k == v:  # the tail bucket is empty: log(0) = −inf, contributes 0
                    s, t = s[:-1], t[:-1]
            expected.append(ref.divergence(s, t, alpha))
        # Forward KL multiplies the student's (float32, §3.3-step-4) tail log-prob by the teacher's tail mass,
        # which amplifies its rounding error (see _random_pair); the other divergences do not.
        close(loss.reshape(-1), expected, tol=1e-3 if alpha == 0.0 else 1e-4)


def test_sampled_token_distill_loss_value_and_gradient():
    # §3.1: ℓ = sg(logp − logp_T)·logp; value (logp − T)·logp, gradient (logp − T) (the per-token
    # REINFORCE estimate of ∇KL(π‖π_T)). logp = (−1, −0.5), T = (−2, −0.5): value (1·−1, 0) = (−1, 0),
    # gradient (1, 0).
    logp = torch.tensor([[-1.0, -0.5]], requires_grad=True)
    teacher = torch.tensor([[-2.0, -0.5]], requires_grad=True)
    loss = sampled_token_distill_loss(logp, teacher)
    close(loss, [[-1.0, 0.0]])
    loss.sum().backward()
    close(logp.grad, [[1.0, 0.0]])
    assert teacher.grad is None or not teacher.grad.any()


@pytest.mark.parametrize("seed", SEEDS)
def test_entropy_from_logits_matches_loop_reference(seed):
    rng = random.Random(seed)
    zs, _ = _random_pair(rng)
    if seed % 2:
        zs[..., 0] = NEG_INF  # an impossible token: contributes 0, never NaN
    h = entropy_from_logits(zs)
    close(h.reshape(-1), [ref.entropy(r) for r in _rows(zs)])
    # uniform over V: ln V
    close(entropy_from_logits(torch.zeros(5)), math.log(5))


KINDS = ["k1", "k2", "k3", "kl", "mse", "low_var_kl", "k1+", "k2+", "k3+", "low_var_kl+"]


@pytest.mark.parametrize("kind", KINDS)
def test_kl_estimate_values_and_gradients(kind):
    # §2.4 with d = logp − ref: forward values k1 = d, k2 = ½d², k3 = e^{−d} + d − 1 (clamped);
    # gradients w.r.t. logp: k1 -> 1, k2 -> d, k3 -> 1 − e^{−d} (inside the clamps); '+' -> k2's d.
    # Hand case d = 0.5: k1 0.5, k2 0.125, k3 e^{−0.5} − 0.5 = 0.606531 − 0.5 = 0.106531.
    # d stays in (−2, 3), where k3 < 10 is not clamped (e^2 − 3 = 4.39), so its gradient is 1 − e^{−d}.
    rng = random.Random(7)
    d = torch.tensor([0.5, -1.7, 0.0, 1.3, *[rng.uniform(-2, 3) for _ in range(12)]], dtype=torch.float64)
    ref_logp = torch.tensor([rng.uniform(-5, 0) for _ in range(len(d))], dtype=torch.float64)
    logp = (ref_logp + d).requires_grad_(True)
    value = kl_estimate(logp, ref_logp, kind)
    close(value, [ref.kl_penalty(x, kind) for x in d.tolist()], tol=1e-6)
    base = kind.rstrip("+")
    hand = {"k1": 0.5, "kl": 0.5, "k2": 0.125, "mse": 0.125, "k3": 0.106531, "low_var_kl": 0.106531}
    assert value[0].item() == pytest.approx(hand[base], abs=1e-6)
    value.sum().backward()
    if kind.endswith("+") or base in ("k2", "mse"):
        expected_grad = d
    elif base in ("k1", "kl"):
        expected_grad = torch.ones_like(d)
    else:
        expected_grad = 1 - torch.exp(-d)
    close(logp.grad, expected_grad, tol=1e-6)


def test_kl_estimate_k3_clamps():
    # −d is clamped to [−20, 20] before exp, the result to [−10, 10] (§2.4): d = −25 -> e^20 − 20 − 1 -> 10;
    # d = 30 -> e^−20 + 20 − 1 = 19.000000002 -> 10; d = 9 -> e^−9 + 8 = 8.000123 (inside the clamps).
    d = torch.tensor([-25.0, 30.0, 9.0], dtype=torch.float64)
    value = kl_estimate(d, torch.zeros(3, dtype=torch.float64), "k3")
    close(value, [10.0, 10.0, math.exp(-9) + 8], tol=1e-7)
    assert torch.isfinite(kl_estimate(torch.tensor([1e4, -1e4]), torch.zeros(2), "k3")).all()


def test_kl_estimate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


# ------------------------------------------------------------------- the JSD gradient in policy-gradient form
#
# Derivation (§3.2). Let π = softmax(z) (student), τ the teacher, M = (1−α)π + ατ and
# D = (1−α)·Σ_v π_v (log π_v − log M_v) + α·Σ_v τ_v (log τ_v − log M_v). Treating π as free variables:
#   ∂D/∂π_v = (1−α)[log π_v + 1 − log M_v] − (1−α)π_v·(1−α)/M_v − α τ_v·(1−α)/M_v
#           = (1−α)[log π_v + 1 − log M_v] − (1−α)·((1−α)π_v + ατ_v)/M_v = (1−α)(s_v − log M_v)
# (the +1 and the −1 cancel). With g_v = ∂D/∂π_v and ∂π_v/∂z_u = π_v(δ_uv − π_u):
#   ∂D/∂z_u = Σ_v g_v π_v (δ_uv − π_u) = π_u (g_u − Σ_v π_v g_v).
# A policy gradient with per-logit advantage A_v, surrogate L = −Σ_v π_v·sg(A_v), has
#   ∂L/∂z_u = −π_u (A_u − Σ_v π_v A_v),
# so the two agree exactly when A_v = −g_v = −(1−α)(s_v − log M_v). Reverse KL (α = 1, special case):
# ∂/∂π_v Σ π(s − t) = s_v + 1 − t_v, the constant drops out, A_v = t_v − s_v. Forward KL (α = 0) has no
# advantage form; ∂/∂z_u Σ τ(t − s) = π_u − τ_u.


def _advantage(s: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 1.0:
        return t - s
    log_m = torch.logaddexp(s + math.log(1 - alpha), t + math.log(alpha))
    return -(1 - alpha) * (s - log_m)


def _pg_gradient(z: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """∂/∂z of the surrogate −Σ π_v sg(A_v), by autograd (float64)."""
    z = z.detach().clone().requires_grad_(True)
    s = torch.log_softmax(z, -1)
    adv = _advantage(s, t, alpha).detach()
    (-(s.exp() * adv).sum()).backward()
    return z.grad


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.75, 1.0])
@pytest.mark.parametrize("seed", SEEDS[:6])
def test_jsd_gradient_is_a_policy_gradient_with_per_logit_advantage(seed, alpha):
    rng = random.Random(seed)
    v = rng.randint(2, 10)
    z = normal(rng, v, scale=2)
    t = torch.log_softmax(normal(rng, v, scale=2), -1)
    expected = _pg_gradient(z, t, alpha)
    # closed form π_u (g_u − Σ π g) with g = −A
    pi = torch.softmax(z, -1)
    g = -_advantage(torch.log_softmax(z, -1), t, alpha)
    close(pi * (g - (pi * g).sum()), expected, tol=1e-12)
    # (1) autograd through the implementation
    zz = z.clone().requires_grad_(True)
    token_divergence(torch.log_softmax(zz, -1), t, alpha=alpha).backward()
    close(zz.grad, expected, tol=2e-5)
    # (2) central finite differences of the float64 loop reference (checks the derivation itself)
    h = 1e-6
    fd = []
    for u in range(v):
        up, dn = z.clone(), z.clone()
        up[u] += h
        dn[u] -= h
        fd.append((ref.divergence(ref.log_softmax(up.tolist()), t.tolist(), alpha)
                   - ref.divergence(ref.log_softmax(dn.tolist()), t.tolist(), alpha)) / (2 * h))  # fmt: skip
    close(torch.tensor(fd), expected, tol=1e-7)
    # (3) finite differences of the implementation itself (float32 inside, so a coarser step)
    h = 1e-2
    fd_impl = []
    for u in range(v):
        up, dn = z.clone(), z.clone()
        up[u] += h
        dn[u] -= h
        d_up = token_divergence(torch.log_softmax(up, -1), t, alpha=alpha).double()
        d_dn = token_divergence(torch.log_softmax(dn, -1), t, alpha=alpha).double()
        fd_impl.append(float((d_up - d_dn) / (2 * h)))
    close(torch.tensor(fd_impl), expected, tol=2e-3)


def test_forward_kl_gradient_is_the_cross_entropy_gradient():
    # §3.2: ∂/∂z KL(T‖S) = π − τ (softmax minus teacher probs).
    rng = random.Random(3)
    z = normal(rng, 6, scale=2).requires_grad_(True)
    t = torch.log_softmax(normal(rng, 6, scale=2), -1)
    token_divergence(torch.log_softmax(z, -1), t, alpha=0.0).backward()
    close(z.grad, torch.softmax(z.detach(), -1) - t.exp(), tol=2e-6)


# --------------------------------------------------------------------------------- −inf logits are safe


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_minus_inf_logits_give_finite_values_and_gradients(alpha):
    # Both distributions exclude ids 0 and 4 (−inf logits, e.g. a banned token); the student also excludes id
    # 2, which the teacher allows. True values: finite for α > 0; for α = 0 KL(T‖S) is +∞ in exact maths, and
    # the library floors log-probs at −1e4 (§5.7) so it stays finite. No NaN anywhere, values or gradients.
    zs = torch.tensor([[NEG_INF, 1.0, NEG_INF, 0.5, NEG_INF, -1.0]], requires_grad=True)
    zt = torch.tensor([[NEG_INF, 0.2, 1.0, -0.3, NEG_INF, 0.0]])
    for top_k in (None, 2, 4, 6):
        loss = distillation_token_loss(zs, zt, alpha=alpha, top_k=top_k)
        (grad,) = torch.autograd.grad(loss.sum(), zs)
        assert torch.isfinite(loss).all(), (alpha, top_k, loss)
        assert torch.isfinite(grad).all(), (alpha, top_k, grad)
        assert (grad[0, [0, 2, 4]] == 0).all()
    if alpha > 0:  # the true value is finite: compare with the loop reference on the full vocabulary
        s, t = ref.log_softmax(zs[0].tolist()), ref.log_softmax(zt[0].tolist())
        expected = ref.divergence(s, t, alpha)
        close(distillation_token_loss(zs, zt, alpha=alpha, top_k=None), [expected], tol=1e-5)
    assert torch.isfinite(entropy_from_logits(zs)).all()
    pair = topk_with_tail(zs, zt, k=4)
    assert not torch.isnan(pair.student).any() and not torch.isnan(pair.teacher).any()
