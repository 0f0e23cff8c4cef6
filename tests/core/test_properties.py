"""Property tests (hypothesis) of opdkit.core: permutation invariance, masking, divergence axioms, numerical
safety. Bounded example counts and no deadline so the file runs in seconds on one thread."""

import math

import core_reference as ref
import pytest
import torch
from core_inputs import close
from hypothesis import given, settings
from hypothesis import strategies as st

from opdkit.core.advantages import group_pass_rates, grpo_advantages, opd_advantages
from opdkit.core.divergences import (
    distillation_token_loss,
    entropy_from_logits,
    token_divergence,
    topk_with_tail,
)
from opdkit.core.groups import sequence_mean
from opdkit.core.losses import aggregate, clipped_policy_loss, mle_loss
from opdkit.core.objectives import ScopeInputs, scope_loss, self_distillation_loss, srpo_loss
from opdkit.core.weights import (
    ScopeWeights,
    SrpoRouting,
    entropy_weights,
    pass_rate_weights,
    scope_weights,
    srpo_routing,
)

FAST = settings(max_examples=40, deadline=None)
NAN, INF = float("nan"), float("inf")
MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
GARBAGE = st.sampled_from([NAN, INF, -INF, 1e30, -1e30, 0.0])

finite = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False, width=32)
logp_value = st.floats(-8.0, 0.0, allow_nan=False, width=32)


@st.composite
def grouped_batch(draw, max_n: int = 12):
    """(rewards, success, ids, permutation, relabel): arbitrary int64 ids from a small pool so that groups
    repeat (and singletons occur), rows in arbitrary order."""
    n = draw(st.integers(1, max_n))
    pool = draw(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=5, unique=True))
    ids = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    success = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rewards = [float(s) for s in success]
    perm = draw(st.permutations(list(range(n))))
    fresh = draw(st.lists(st.integers(-(2**62), 2**62), min_size=len(pool), max_size=len(pool), unique=True))
    relabel = dict(zip(pool, fresh))
    return rewards, success, ids, perm, relabel


@st.composite
def masked_matrix(draw, max_n: int = 6, max_t: int = 5):
    """(n, t, mask) with any 0/1 pattern, empty rows included."""
    n, t = draw(st.integers(1, max_n)), draw(st.integers(1, max_t))
    mask = draw(st.lists(st.lists(st.integers(0, 1), min_size=t, max_size=t), min_size=n, max_size=n))
    return n, t, mask


def _matrix(draw, n: int, t: int, values=finite) -> torch.Tensor:
    return torch.tensor(draw(st.lists(st.lists(values, min_size=t, max_size=t), min_size=n, max_size=n)))


# ----------------------------------------------------------------------------------- permutation invariance


@FAST
@given(grouped_batch(), st.booleans())
def test_group_functions_commute_with_row_permutations_and_id_relabelling(batch, normalize_std):
    rewards, success, ids, perm, relabel = batch
    r, c, g = torch.tensor(rewards), torch.tensor(success), torch.tensor(ids)
    p = torch.tensor(perm)
    g2 = torch.tensor([relabel[i] for i in ids])
    for fn in (
        lambda r_, g_: grpo_advantages(r_, g_, normalize_std=normalize_std),
        group_pass_rates,
        lambda r_, g_: srpo_routing(r_, g_).sdpo_N,
    ):
        base = fn(r, g)
        # permuting rows (within and across groups) permutes the outputs (up to summation-order rounding)
        torch.testing.assert_close(fn(r[p], g[p]), base[p], atol=1e-6, rtol=1e-6)
        assert torch.equal(fn(r, g2), base)  # only equality of ids matters, not their values
    close(grpo_advantages(r, g, normalize_std=normalize_std), ref.grpo(rewards, ids, normalize_std), tol=1e-4)
    assert srpo_routing(c, g).sdpo_N.tolist() == ref.srpo_routing(success, ids)


@FAST
@given(grouped_batch(), st.data())
def test_scope_weights_commute_with_row_permutations(batch, data):
    _, success, ids, perm, relabel = batch
    n = len(ids)
    ls = torch.tensor(data.draw(st.lists(logp_value, min_size=n, max_size=n)))
    lt = torch.tensor(data.draw(st.lists(logp_value, min_size=n, max_size=n)))
    c, g, p = torch.tensor(success), torch.tensor(ids), torch.tensor(perm)
    tau = data.draw(st.sampled_from([0.3, 1.0, 4.0]))
    base = scope_weights(ls, lt, c, g, tau=tau)
    moved = scope_weights(ls[p], lt[p], c[p], g[p], tau=tau)
    close(moved.student_N, base.student_N[p], tol=1e-6)
    close(moved.teacher_N, base.teacher_N[p], tol=1e-6)
    relabelled = scope_weights(ls, lt, c, torch.tensor([relabel[i] for i in ids]), tau=tau)
    close(relabelled.student_N, base.student_N, tol=1e-6)
    # mean 1 per non-empty path of each group (mean1)
    for gid in set(ids):
        for path, w in ((c, base.student_N), (~c, base.teacher_N)):
            sel = (g == gid) & path
            if sel.any():
                assert float(w[sel].mean()) == pytest.approx(1.0, abs=1e-5)


@FAST
@given(st.lists(st.sampled_from([0.0, 1.0, 0.125, 0.25, 0.5, 0.75, 0.3]), min_size=1, max_size=10), st.data())
def test_pass_rate_weights_commute_with_question_permutations(p, data):
    perm = torch.tensor(data.draw(st.permutations(list(range(len(p))))))
    pt = torch.tensor(p)
    for alpha in (0.5, 1.0):
        close(pass_rate_weights(pt[perm], alpha=alpha), pass_rate_weights(pt, alpha=alpha)[perm], tol=1e-6)
        w = pass_rate_weights(pt, alpha=alpha)
        assert torch.isfinite(w).all() and (w >= 0).all()


@FAST
@given(masked_matrix(), st.sampled_from(MODES), st.data())
def test_aggregate_is_invariant_to_row_permutations(shape, mode, data):
    n, t, mask = shape
    loss = _matrix(data.draw, n, t)
    perm = torch.tensor(data.draw(st.permutations(list(range(n)))))
    m = torch.tensor(mask)
    close(aggregate(loss[perm], m[perm], mode), aggregate(loss, m, mode), tol=1e-5)


# ------------------------------------------------------------------------- masked tokens are inert


def _garbage_under(x: torch.Tensor, mask: torch.Tensor, draw, values=GARBAGE) -> torch.Tensor:
    """x with every masked position replaced by a drawn garbage value."""
    out = x.clone()
    for i, j in (mask == 0).nonzero().tolist():
        out[i, j] = draw(values)
    return out


def _loss_and_grad(fn, leaf: torch.Tensor):
    leaf = leaf.clone().requires_grad_(True)
    loss = fn(leaf)
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    return loss.detach(), torch.zeros_like(leaf) if grad is None else grad


@FAST
@given(masked_matrix(), st.sampled_from(MODES), st.data())
def test_aggregate_ignores_anything_under_the_mask(shape, mode, data):
    n, t, mask = shape
    m = torch.tensor(mask)
    loss = _matrix(data.draw, n, t)
    dirty = _garbage_under(loss, m, data.draw)
    a, ga = _loss_and_grad(lambda x: aggregate(x, m, mode), loss)
    b, gb = _loss_and_grad(lambda x: aggregate(x, m, mode), dirty)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert torch.isfinite(b) and torch.isfinite(gb).all()


@FAST
@given(masked_matrix(), st.data())
def test_policy_losses_ignore_finite_garbage_under_the_mask(shape, data):
    # Garbage here is finite but extreme (log-ratios far beyond the ±20 clamp, huge advantages).
    n, t, mask = shape
    m = torch.tensor(mask)
    logp, old = _matrix(data.draw, n, t, logp_value), _matrix(data.draw, n, t, logp_value)
    adv = _matrix(data.draw, n, t)
    finite_garbage = st.sampled_from([1e6, -1e6, 0.0, 123.0])
    d_logp, d_old, d_adv = (_garbage_under(x, m, data.draw, finite_garbage) for x in (logp, old, adv))
    weights = torch.rand(n)
    for fn_clean, fn_dirty, leaf_clean, leaf_dirty in [
        (lambda x: clipped_policy_loss(x, old, adv, m).loss,
         lambda x: clipped_policy_loss(x, d_old, d_adv, m).loss, logp, d_logp),
        (lambda x: mle_loss(x, weights, m).loss, lambda x: mle_loss(x, weights, m).loss, logp, d_logp),
    ]:  # fmt: skip
        a, ga = _loss_and_grad(fn_clean, leaf_clean)
        b, gb = _loss_and_grad(fn_dirty, leaf_dirty)
        close(b, a, tol=1e-6)
        close(gb, ga, tol=1e-6)
        assert not gb[m == 0].any()
    clean = clipped_policy_loss(logp, old, adv, m).metrics
    dirty = clipped_policy_loss(d_logp, d_old, d_adv, m).metrics
    assert clean == pytest.approx(dirty, rel=1e-5, abs=1e-6)


def test_policy_loss_gradient_ignores_non_finite_values_under_the_mask():
    # Minimal reproduction: one valid token (A = 1) and one padded token whose advantage is NaN (e.g. a
    # teacher log-prob −inf/NaN at padding in a hand-built OPD advantage). Loss −1 is right; the gradient
    # must be (−1, 0), it is (−1, NaN).
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    for adv in (torch.tensor([[1.0, NAN]]), torch.tensor([[1.0, INF]])):
        out = clipped_policy_loss(logp, logp.detach(), adv, torch.tensor([[1, 0]]))
        (grad,) = torch.autograd.grad(out.loss, logp)
        assert out.loss.item() == -1.0
        assert grad.tolist() == [[-1.0, 0.0]]


@FAST
@given(masked_matrix(), st.data())
def test_distillation_objectives_ignore_anything_under_the_mask(shape, data):
    # Per-token divergences, SRPO branch losses and teacher log-probs may hold NaN/inf at padding.
    n, t, mask = shape
    m = torch.tensor(mask)
    div = _matrix(data.draw, n, t).abs()
    other = _matrix(data.draw, n, t)
    d_div, d_other = _garbage_under(div, m, data.draw), _garbage_under(other, m, data.draw)
    q_w = torch.rand(n)
    routing = SrpoRouting(sdpo_N=torch.rand(n) < 0.5, grpo_N=torch.ones(n, dtype=torch.bool))
    routing = SrpoRouting(sdpo_N=routing.sdpo_N, grpo_N=~routing.sdpo_N)
    pairs = [
        (lambda x: self_distillation_loss(x, m, question_weight_N=q_w).loss, div, d_div),
        (lambda x: srpo_loss(other, x, routing, m).loss, div, d_div),
        (lambda x: srpo_loss(x, d_div, routing, m).loss, other, d_other),
    ]
    for fn, clean, dirty in pairs:
        a, ga = _loss_and_grad(fn, clean)
        b, gb = _loss_and_grad(fn, dirty)
        close(b, a, tol=1e-6)
        close(gb, ga, tol=1e-6)
    old, teacher = _matrix(data.draw, n, t, logp_value), _matrix(data.draw, n, t, logp_value)
    adv = opd_advantages(old, teacher, m, discount=data.draw(st.sampled_from([0.0, 0.9])))
    dirty_adv = opd_advantages(
        _garbage_under(old, m, data.draw), _garbage_under(teacher, m, data.draw), m, discount=0.0
    )
    assert torch.isfinite(dirty_adv).all()
    assert not adv[m == 0].any()
    close(sequence_mean(_garbage_under(old, m, data.draw), m), sequence_mean(old, m), tol=1e-6)


@FAST
@given(masked_matrix(), st.data())
def test_scope_loss_ignores_garbage_at_padding_and_in_failed_teacher_rows(shape, data):
    n, t, mask = shape
    m = torch.tensor(mask)
    logp, old, teacher = (_matrix(data.draw, n, t, logp_value) for _ in range(3))
    correct = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    weights = ScopeWeights(torch.rand(n) * correct, torch.rand(n) * ~correct)
    dirty_teacher = _garbage_under(teacher, m, data.draw)
    dirty_teacher[~valid] = NAN  # a failed teacher row: NaN everywhere
    clean_teacher = teacher.clone()
    clean_teacher[~valid] = -3.0
    d_logp, d_old = (
        _garbage_under(logp, m, data.draw, st.sampled_from([1e6, -1e6])),
        _garbage_under(old, m, data.draw, st.sampled_from([1e6, -1e6])),
    )
    agg = data.draw(st.sampled_from(["code", "joint"]))

    def run(lp, od, te):
        return lambda x: scope_loss(ScopeInputs(x, od, te, m, correct, valid), weights, agg=agg).loss

    a, ga = _loss_and_grad(run(logp, old, clean_teacher), logp)
    b, gb = _loss_and_grad(run(d_logp, d_old, dirty_teacher), d_logp)
    close(b, a, tol=1e-6)
    close(gb, ga, tol=1e-6)
    assert torch.isfinite(gb).all()
    assert not gb[~valid & ~correct].any()  # failed teacher rows get no gradient at all


# ------------------------------------------------------------------------------------- divergence axioms


@st.composite
def logits_pair(draw, max_v: int = 8):
    v = draw(st.integers(2, max_v))
    row = st.lists(st.floats(-15, 15, allow_nan=False, width=32), min_size=v, max_size=v)
    return torch.tensor(draw(row), dtype=torch.float64), torch.tensor(draw(row), dtype=torch.float64)


@FAST
@given(logits_pair(), st.floats(0.0, 1.0))
def test_divergences_are_nonnegative_and_zero_on_equal_inputs(pair, alpha):
    zs, zt = pair
    s, t = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    for a in (alpha, 0.0, 1.0, 0.5):
        d = token_divergence(s, t, alpha=a)
        assert torch.isfinite(d) and float(d) >= 0.0
        assert float(token_divergence(s, s, alpha=a)) == pytest.approx(0.0, abs=1e-6)
    # the endpoints are the named KLs (§3.2)
    assert float(token_divergence(s, t, alpha=0.0)) == pytest.approx(
        ref.kl(t.tolist(), s.tolist()), abs=2e-5, rel=1e-4
    )
    assert float(token_divergence(s, t, alpha=1.0)) == pytest.approx(
        ref.kl(s.tolist(), t.tolist()), abs=2e-5, rel=1e-4
    )
    expected = ref.divergence(s.tolist(), t.tolist(), alpha)
    assert float(token_divergence(s, t, alpha=alpha)) == pytest.approx(expected, abs=2e-5, rel=1e-4)


@FAST
@given(logits_pair(max_v=10), st.integers(1, 12), st.booleans())
def test_tail_bucket_makes_each_row_a_distribution(pair, k, tail):
    zs, zt = pair
    got = topk_with_tail(zs.unsqueeze(0), zt.unsqueeze(0), k=k, tail=tail)
    for logp in got:
        assert not torch.isnan(logp).any()
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-5)
        assert logp.shape[-1] == min(k, zs.numel()) + int(tail)


# --------------------------------------------------------------------------------------- numerical safety


@FAST
@given(logits_pair(), st.data(), st.sampled_from([0.0, 0.5, 1.0, 0.2]))
def test_minus_inf_logits_never_produce_nan(pair, data, alpha):
    zs, zt = pair
    v = zs.numel()
    # knock out a random subset (never everything) of each distribution
    for z in (zs, zt):
        dead = data.draw(st.lists(st.integers(0, v - 1), max_size=v - 1, unique=True))
        z[dead] = -INF
    zs = zs.clone().requires_grad_(True)
    top_k = data.draw(st.sampled_from([None, 1, 3, v]))
    loss = distillation_token_loss(zs, zt, alpha=alpha, top_k=top_k)
    (grad,) = torch.autograd.grad(loss, zs)
    assert not torch.isnan(loss) and torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    assert torch.isfinite(entropy_from_logits(zt))


@FAST
@given(masked_matrix(), st.floats(0.0, 1e4), st.floats(0.1, 10.0))
def test_entropy_weights_are_finite_for_any_entropy_scale(shape, scale, beta):
    n, t, mask = shape
    m = torch.tensor(mask)
    h = torch.rand(n, t, generator=torch.Generator().manual_seed(n * 7 + t)) * scale
    w = entropy_weights(h, m, beta=beta)
    assert torch.isfinite(w).all() and (w >= 0).all()
    if m.any():
        # float32 log-weights of size βH carry an absolute error ~6e-8·βH, hence the scale-aware tolerance
        # (realistic entropies are below ln V ≈ 12).
        assert float(w[m.bool()].mean()) == pytest.approx(1.0, abs=1e-4 + 2e-7 * beta * scale)
    else:
        assert not w.any()


def test_degenerate_and_empty_inputs_never_produce_nan():
    # all-degenerate batch: SC-SDPO weights are all zeros (§6.3), so the SDPO loss is exactly 0
    w = pass_rate_weights(torch.tensor([0.0, 1.0, 0.0]))
    assert w.tolist() == [0.0, 0.0, 0.0]
    div = torch.rand(3, 4, requires_grad=True)
    out = self_distillation_loss(div, torch.ones(3, 4), question_weight_N=w)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.isfinite(div.grad).all()
    # all-masked rows / an all-masked batch in every aggregation mode
    for mode in MODES:
        x = torch.rand(2, 3, requires_grad=True)
        value = aggregate(x, torch.zeros(2, 3), mode)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(x.grad).all()
    # empty groups: no rows at all
    empty_f, empty_i = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    assert grpo_advantages(empty_f, empty_i).numel() == 0
    assert srpo_routing(empty_f, empty_i).sdpo_N.numel() == 0
    assert entropy_weights(torch.zeros(0, 3), torch.zeros(0, 3)).numel() == 0
    # groups where a path is empty (all correct / all wrong) give zeros, not NaN, on that path
    sw = scope_weights(
        torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0]), torch.tensor([1, 1]), torch.tensor([0, 0])
    )
    assert sw.teacher_N.tolist() == [0.0, 0.0] and torch.isfinite(sw.student_N).all()
    # a zero-length response has mean log-prob 0 (PPL 1), §5.7
    assert sequence_mean(torch.tensor([[NAN, NAN]]), torch.zeros(1, 2)).tolist() == [0.0]
    assert math.isfinite(grpo_advantages(torch.tensor([1.0, 1.0]), torch.tensor([5, 5]))[0].item())


@FAST
@given(grouped_batch(max_n=8), st.integers(1, 4), st.sampled_from(["code", "joint"]), st.data())
def test_method_losses_are_invariant_to_row_permutations(batch, t, agg, data):
    # Weights computed per group, then the SCOPE / SDPO / SRPO losses: permuting the rows (within and across
    # groups) permutes every per-row quantity and leaves the scalar loss unchanged.
    _, success, ids, perm, _ = batch
    n = len(ids)
    p, g, c = torch.tensor(perm), torch.tensor(ids), torch.tensor(success)
    logp, teacher = (_matrix(data.draw, n, t, logp_value) for _ in range(2))
    mask = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, 1), min_size=t, max_size=t), min_size=n, max_size=n))
    )

    def scope(rows):
        w = scope_weights(
            sequence_mean(logp[rows], mask[rows]), sequence_mean(teacher[rows], mask[rows]), c[rows], g[rows]
        )
        inputs = ScopeInputs(logp[rows], logp[rows], teacher[rows], mask[rows], c[rows])
        return scope_loss(inputs, w, agg=agg).loss

    def sdpo(rows):
        return self_distillation_loss(
            -logp[rows], mask[rows], question_weight_N=group_pass_rates(c[rows], g[rows])
        ).loss

    def srpo(rows):
        return srpo_loss(logp[rows], teacher[rows], srpo_routing(c[rows], g[rows]), mask[rows]).loss

    everything = torch.arange(n)
    for fn in (scope, sdpo, srpo):
        close(fn(p), fn(everything), tol=1e-5)
