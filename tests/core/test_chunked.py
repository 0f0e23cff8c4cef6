"""The chunked hidden-state distillation loss against the straightforward reference on full logits.

Reference: logits = (h·Wᵀ + b)/T for student and teacher, ``distillation_token_loss`` (or
``token_divergence`` of ``teacher_support_logp``), IS weight via ``truncated_is_weight``, SRPO weights via
``entropy_weights``, then ``self_distillation_loss``; gradients by autograd. Errors are norm-wise relative:
‖a − b‖ / ‖b‖.

The reference computes its divergences in float32 whatever the input dtype, so the float64 cases cannot be
more exact than float32 arithmetic: they pass at 1e-5 here, but the logit scale matters (see
``test_any_shape_and_chunk_size``). ``test_gradient_matches_finite_differences`` checks the analytic
gradient against central differences of the chunked value itself in float64 (torch.autograd.gradcheck)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opdkit.core.chunked import (
    ChunkSettings,
    DivergenceSpec,
    LinearHead,
    LossWeighting,
    StudentInputs,
    TeacherHidden,
    TeacherTopK,
    chunked_distillation_loss,
    chunked_token_logp,
)
from opdkit.core.divergences import (
    distillation_token_loss,
    entropy_from_logits,
    teacher_support_logp,
    token_divergence,
)
from opdkit.core.losses import truncated_is_weight
from opdkit.core.objectives import DistillAggregation, self_distillation_loss
from opdkit.core.weights import entropy_weights

TOLERANCE = {torch.float64: 1e-5, torch.float32: 1e-4}

SPECS = [
    DivergenceSpec(alpha=0.5, top_k=None),
    DivergenceSpec(alpha=0.3, top_k=None),
    DivergenceSpec(alpha=0.0, top_k=None),
    DivergenceSpec(alpha=1.0, top_k=None),
    DivergenceSpec(alpha=0.5, top_k=7, tail=True),
    DivergenceSpec(alpha=0.0, top_k=7, tail=True),
    DivergenceSpec(alpha=1.0, top_k=7, tail=True),
    DivergenceSpec(alpha=0.5, top_k=7, tail=False),
    DivergenceSpec(alpha=1.0, top_k=7, tail=False),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


ABS_FLOOR = 1e-7  # per entry, float32 resolution: a quantity the reference rounds to ~4e-8 instead of 0


def close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """‖a − b‖ ≤ rtol·‖b‖ + ABS_FLOOR·√numel (the floor matters only where the reference is ~0)."""
    floor = ABS_FLOOR * max(b.numel(), 1) ** 0.5
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm()) <= rtol * float(b.norm()) + floor


@dataclass
class Problem:
    """Random student/teacher hidden states and heads; logits of scale ~2-3 so divergences are O(0.1-1)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    teacher_hidden: torch.Tensor
    teacher_weight: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    old_logp: torch.Tensor
    question_weight: torch.Tensor

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        return tuple(p for p in (self.hidden, self.weight, self.bias) if p is not None)

    def student(self, ids: bool = True) -> StudentInputs:
        return StudentInputs(self.hidden, LinearHead(self.weight, self.bias), self.ids if ids else None)

    def teacher(self) -> TeacherHidden:
        return TeacherHidden(self.teacher_hidden, LinearHead(self.teacher_weight))

    def logits(self, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        z_s = self.hidden @ self.weight.T
        if self.bias is not None:
            z_s = z_s + self.bias
        return z_s / temperature, (self.teacher_hidden @ self.teacher_weight.T) / temperature


def make_problem(n=3, t=9, h=6, v=40, *, dtype=torch.float64, bias=True, seed=0, scale=2.5) -> Problem:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(False)

    mask = torch.ones(n, t)
    mask[0, t // 2 :] = 0  # right padding
    if n > 2:
        mask[2] = 0  # a sequence without teacher (sd_mask = 0)
    ids = torch.randint(0, v, (n, t), generator=g)
    return Problem(
        hidden=randn(n, t, h).requires_grad_(True),
        weight=randn(v, h, scale=h**-0.5 * scale).requires_grad_(True),
        bias=randn(v, scale=0.2 * scale).requires_grad_(True) if bias else None,
        teacher_hidden=randn(n, t, h),
        teacher_weight=randn(v, h, scale=h**-0.5 * scale),
        ids=ids,
        mask=mask,
        old_logp=torch.randn(n, t, generator=g) * 0.5 - 3.5,  # ratios around 1, some clipped at 2
        question_weight=torch.rand(n, generator=g) + 0.5,
    )


def reference_loss(problem: Problem, spec: DivergenceSpec, weighting: LossWeighting, temperature: float):
    """The straightforward implementation on full logits, with the same weights (§4.7, §7.4)."""
    z_s, z_t = problem.logits(temperature)
    div = distillation_token_loss(z_s, z_t, alpha=spec.alpha, top_k=spec.top_k, tail=spec.tail)
    is_weight = None
    if weighting.is_clip is not None:
        logp = torch.log_softmax(z_s.float(), dim=-1).gather(-1, problem.ids.unsqueeze(-1)).squeeze(-1)
        is_weight = truncated_is_weight(logp, weighting.old_logp_N_T, cap=weighting.is_clip)
    if weighting.entropy_beta is not None:
        ent_w = entropy_weights(
            entropy_from_logits(z_t), weighting.loss_mask_N_T, beta=weighting.entropy_beta
        )
        is_weight = ent_w if is_weight is None else is_weight * ent_w
    weight = weighting.weight_N_T
    return self_distillation_loss(
        div, weighting.loss_mask_N_T, is_weight_N_T=is_weight, question_weight_N=weight,
        aggregation=weighting.aggregation,
    )  # fmt: skip


def assert_matches(problem: Problem, spec: DivergenceSpec, weighting: LossWeighting, **kw) -> None:
    dtype = problem.hidden.dtype
    temperature = kw.pop("temperature", 0.8)
    chunk = kw.pop("chunk_tokens", 4)
    out = chunked_distillation_loss(
        problem.student(),
        problem.teacher(),
        weighting,
        ChunkSettings(temperature=temperature, divergence=spec, chunk_tokens=chunk, **kw),
    )
    ref = reference_loss(problem, spec, weighting, temperature)
    grads = torch.autograd.grad(out.loss, problem.params)
    ref_grads = torch.autograd.grad(ref.loss, problem.params)
    tol = TOLERANCE[dtype]
    assert close(out.loss, ref.loss, tol), (float(out.loss.detach()), float(ref.loss.detach()))
    for name, got, want in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert close(got, want, tol), (name, rel_err(got, want))
    mask = weighting.loss_mask_N_T.bool()
    assert close(out.per_token_N_T[mask], ref.per_token_N_T[mask], tol)
    assert (out.per_token_N_T[~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda s: f"a{s.alpha}-k{s.top_k}-{'tail' if s.tail else 'renorm'}"
)
def test_matches_reference_with_is_clip_and_question_weights(
    spec: DivergenceSpec, dtype: torch.dtype
) -> None:
    problem = make_problem(dtype=dtype)
    weighting = LossWeighting(
        problem.mask, weight_N_T=problem.question_weight, old_logp_N_T=problem.old_logp, is_clip=2.0
    )
    assert_matches(problem, spec, weighting)


@pytest.mark.parametrize(
    ("mode", "denominator"),
    [
        *(
            (m, "valid")
            for m in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
        ),
        *((m, "per_sequence_all") for m in ("seq-mean-token-sum", "seq-mean-token-mean")),  # counts sequences
    ],
)
def test_every_aggregation_mode(mode: str, denominator: str) -> None:
    problem = make_problem(seed=1)
    weighting = LossWeighting(
        problem.mask, aggregation=DistillAggregation(mode=mode, denominator=denominator)
    )
    assert_matches(problem, DivergenceSpec(alpha=0.5, top_k=None), weighting, chunk_tokens=5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("top_k", [None, 7])
def test_srpo_entropy_weights(top_k: int | None, dtype: torch.dtype) -> None:
    problem = make_problem(seed=2, dtype=dtype)
    weighting = LossWeighting(
        problem.mask, old_logp_N_T=problem.old_logp, is_clip=2.0, entropy_beta=1.0,
        aggregation=DistillAggregation(mode="token-mean", denominator="valid"),
    )  # fmt: skip
    assert_matches(problem, DivergenceSpec(alpha=0.5, top_k=top_k), weighting)
    out = chunked_distillation_loss(
        problem.student(), problem.teacher(), weighting, ChunkSettings(chunk_tokens=3)
    )
    z_t = problem.logits(1.0)[1]
    want = entropy_weights(entropy_from_logits(z_t), problem.mask, beta=1.0)
    assert rel_err(out.entropy_weight_N_T, want) <= TOLERANCE[dtype]


def test_given_entropy_mean_is_used_as_the_normaliser() -> None:
    """Micro-batches pass the whole batch's mean of exp(−βH); with the local mean it equals the default."""
    problem = make_problem(seed=3)
    spec = ChunkSettings(divergence=DivergenceSpec(top_k=None), chunk_tokens=4, teacher_entropy=True)
    local = chunked_distillation_loss(
        problem.student(), problem.teacher(), LossWeighting(problem.mask, entropy_beta=2.0), spec
    )
    mask = problem.mask.bool()
    mean = torch.exp(-2.0 * local.teacher_entropy_N_T[mask]).mean()
    given = chunked_distillation_loss(
        problem.student(),
        problem.teacher(),
        LossWeighting(problem.mask, entropy_beta=2.0, entropy_mean=mean),
        spec,
    )
    assert rel_err(given.loss, local.loss) <= 1e-10
    assert rel_err(given.entropy_weight_N_T, local.entropy_weight_N_T) <= 1e-10
    halved = chunked_distillation_loss(
        problem.student(),
        problem.teacher(),
        LossWeighting(problem.mask, entropy_beta=2.0, entropy_mean=2 * mean),
        spec,
    )
    assert rel_err(halved.loss, local.loss / 2) <= 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_server_teacher_support(dtype: torch.dtype) -> None:
    """§3.3 remote variant: teacher's top-K ids and log-probs, both renormalised on them."""
    problem = make_problem(seed=4, dtype=dtype)
    z_s, z_t = problem.logits(0.8)
    teacher_logp = torch.log_softmax(z_t, dim=-1)
    top = teacher_logp.topk(5, dim=-1)
    weighting = LossWeighting(problem.mask, weight_N_T=problem.question_weight)
    out = chunked_distillation_loss(
        problem.student(), TeacherTopK(top.indices, top.values), weighting,
        ChunkSettings(temperature=0.8, divergence=DivergenceSpec(alpha=0.5), chunk_tokens=4),
    )  # fmt: skip
    pair = teacher_support_logp(z_s, top.indices, top.values)
    div = token_divergence(pair.student, pair.teacher, alpha=0.5)
    ref = self_distillation_loss(div, problem.mask, question_weight_N=problem.question_weight)
    tol = TOLERANCE[dtype]
    assert rel_err(out.loss, ref.loss) <= tol
    for got, want in zip(
        torch.autograd.grad(out.loss, problem.params), torch.autograd.grad(ref.loss, problem.params)
    ):
        assert rel_err(got, want) <= tol


def test_gradient_matches_finite_differences() -> None:
    """Analytic gradient vs central differences of the chunked value itself (float64, tiny sizes)."""
    problem = make_problem(n=2, t=5, h=3, v=11, seed=5)
    teacher = problem.teacher()
    for spec in (
        DivergenceSpec(0.5, None),
        DivergenceSpec(0.0, None),
        DivergenceSpec(0.5, 4),
        DivergenceSpec(1.0, 4, False),
    ):

        def loss(hidden, weight, bias, spec=spec):
            student = StudentInputs(hidden, LinearHead(weight, bias), problem.ids)
            weighting = LossWeighting(problem.mask, weight_N_T=problem.question_weight)
            settings = ChunkSettings(temperature=0.9, divergence=spec, chunk_tokens=3)
            return chunked_distillation_loss(student, teacher, weighting, settings).loss

        assert torch.autograd.gradcheck(loss, problem.params, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logp_and_entropies(dtype: torch.dtype) -> None:
    """Sampled-token log-probs (value and gradient through a PG-like use) and both entropies."""
    problem = make_problem(seed=6, dtype=dtype)
    response_mask = torch.ones_like(problem.mask)
    response_mask[0, -2:] = 0  # padding of row 0 (outside the loss mask too)
    student = StudentInputs(
        problem.hidden, LinearHead(problem.weight, problem.bias), problem.ids, response_mask
    )
    out = chunked_distillation_loss(
        student, problem.teacher(), LossWeighting(problem.mask),
        ChunkSettings(temperature=0.8, chunk_tokens=5, student_entropy=True, teacher_entropy=True),
    )  # fmt: skip
    z_s, z_t = problem.logits(0.8)
    logp = torch.log_softmax(z_s, dim=-1).gather(-1, problem.ids.unsqueeze(-1)).squeeze(-1)
    valid = response_mask.bool()
    tol = TOLERANCE[dtype]
    assert rel_err(out.logp_N_T[valid], logp[valid]) <= tol
    assert (out.logp_N_T[~valid] == 0).all()
    in_loss = problem.mask.bool()
    assert rel_err(out.teacher_entropy_N_T[in_loss], entropy_from_logits(z_t)[in_loss]) <= tol
    assert rel_err(out.student_entropy_N_T[valid], entropy_from_logits(z_s)[valid]) <= tol
    # A combined objective (distillation + a policy-gradient term on every response token, as SRPO's union).
    adv = torch.randn(problem.mask.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    pg_mask = valid & ~in_loss
    total = out.loss - (adv * out.logp_N_T * pg_mask).sum()
    ref = reference_loss(problem, DivergenceSpec(), LossWeighting(problem.mask), 0.8).loss
    ref_total = ref - (adv * logp * pg_mask).sum()
    for got, want in zip(
        torch.autograd.grad(total, problem.params), torch.autograd.grad(ref_total, problem.params)
    ):
        assert rel_err(got, want) <= tol


def test_chunked_token_logp_matches_log_softmax() -> None:
    problem = make_problem(seed=7)
    student = StudentInputs(problem.hidden, LinearHead(problem.weight, problem.bias), problem.ids)
    out = chunked_token_logp(student, temperature=0.7, entropy=True, chunk_tokens=4)
    z_s = problem.logits(0.7)[0]
    logp = torch.log_softmax(z_s, dim=-1).gather(-1, problem.ids.unsqueeze(-1)).squeeze(-1)
    assert rel_err(out.logp_N_T, logp) <= 1e-12
    assert rel_err(out.entropy_N_T, entropy_from_logits(z_s)) <= 1e-5
    adv = torch.randn(logp.shape, dtype=logp.dtype)
    grads = torch.autograd.grad((adv * out.logp_N_T).sum(), problem.params)
    ref = torch.autograd.grad((adv * logp).sum(), problem.params)
    for got, want in zip(grads, ref):
        assert rel_err(got, want) <= 1e-12


def test_empty_loss_mask_gives_zero_loss_and_gradient() -> None:
    problem = make_problem(seed=8)
    weighting = LossWeighting(torch.zeros_like(problem.mask))
    out = chunked_distillation_loss(problem.student(), problem.teacher(), weighting, ChunkSettings())
    assert float(out.loss.detach()) == 0.0 and not out.divergence_N_T.requires_grad
    out.loss.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in problem.params)


def test_identical_student_and_teacher_give_zero() -> None:
    """D = 0 at every position; the reference's clamps keep the gradient at (numerically) 0 as well."""
    problem = make_problem(seed=9, bias=False)
    teacher = TeacherHidden(problem.hidden.detach(), LinearHead(problem.weight.detach()))
    for spec in (DivergenceSpec(0.5, None), DivergenceSpec(0.5, 5)):
        out = chunked_distillation_loss(
            problem.student(), teacher, LossWeighting(problem.mask), ChunkSettings(divergence=spec)
        )
        assert abs(float(out.loss.detach())) <= 1e-12
        grads = torch.autograd.grad(out.loss, problem.params)
        assert max(float(g.abs().max()) for g in grads) <= 1e-10


def test_frozen_head_and_no_grad() -> None:
    problem = make_problem(seed=10)
    frozen = StudentInputs(
        problem.hidden, LinearHead(problem.weight.detach(), problem.bias.detach()), problem.ids
    )
    out = chunked_distillation_loss(frozen, problem.teacher(), LossWeighting(problem.mask), ChunkSettings())
    (grad_h,) = torch.autograd.grad(out.loss, problem.hidden)
    ref = reference_loss(problem, DivergenceSpec(), LossWeighting(problem.mask), 1.0).loss
    (ref_h,) = torch.autograd.grad(ref, problem.hidden)
    assert rel_err(grad_h, ref_h) <= 1e-5
    with torch.no_grad():
        out = chunked_distillation_loss(
            problem.student(), problem.teacher(), LossWeighting(problem.mask), ChunkSettings()
        )
    assert not out.loss.requires_grad and rel_err(out.loss, ref) <= 1e-5


def test_backward_twice_through_a_retained_graph() -> None:
    """The first backward hands its buffers to autograd; the second recomputes them (same gradient)."""
    problem = make_problem(seed=11)
    out = chunked_distillation_loss(
        problem.student(), problem.teacher(), LossWeighting(problem.mask), ChunkSettings()
    )
    first = torch.autograd.grad(out.loss, problem.params, retain_graph=True)
    second = torch.autograd.grad(3.0 * out.loss, problem.params)
    for a, b in zip(first, second):
        assert rel_err(3.0 * a, b) <= 1e-12


def test_bad_inputs_name_the_field() -> None:
    problem = make_problem(seed=12)
    with pytest.raises(ValueError, match="loss_mask_N_T"):
        chunked_distillation_loss(problem.student(), problem.teacher(), LossWeighting(problem.mask[:, :-1]))
    with pytest.raises(ValueError, match="is_clip and old_logp_N_T"):
        chunked_distillation_loss(
            problem.student(), problem.teacher(), LossWeighting(problem.mask, is_clip=2.0)
        )
    with pytest.raises(ValueError, match="token_ids_N_T"):
        chunked_distillation_loss(
            problem.student(ids=False), problem.teacher(),
            LossWeighting(problem.mask, old_logp_N_T=problem.old_logp, is_clip=2.0),
        )  # fmt: skip
    wrong_vocab = TeacherHidden(problem.teacher_hidden, LinearHead(problem.teacher_weight[:-1]))
    with pytest.raises(ValueError, match="TeacherHidden"):
        chunked_distillation_loss(problem.student(), wrong_vocab, LossWeighting(problem.mask))
    with pytest.raises(ValueError, match="alpha"):
        DivergenceSpec(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        chunked_distillation_loss(
            problem.student(), problem.teacher(), LossWeighting(problem.mask), ChunkSettings(temperature=0)
        )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    t=st.integers(1, 9),
    v=st.integers(2, 30),
    chunk=st.integers(1, 40),
    top_k=st.one_of(st.none(), st.integers(1, 35)),
    alpha=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    tail=st.booleans(),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_any_shape_and_chunk_size(n, t, v, chunk, top_k, alpha, tail, seed, dtype) -> None:
    """Chunk sizes that do not divide the token count, k ≥ V, single tokens, random padding.

    Logits of scale ~0.5 here: with tiny vocabularies and peaked logits the top-k mass gets within 1e-3 of 1
    and the tail bucket log(1 − Σp) loses digits in float32 in the reference itself (measured against
    float64: the reference 7e-5 off, this implementation 4e-5, at V = 5, k = 2, mass 0.9992), which would
    test float32 conditioning rather than the chunking."""
    problem = make_problem(n=n, t=t, h=4, v=v, seed=seed, dtype=dtype, scale=0.5)
    problem.mask = (torch.rand(n, t, generator=torch.Generator().manual_seed(seed)) < 0.7).float()
    weighting = LossWeighting(problem.mask, weight_N_T=problem.question_weight)
    assert_matches(
        problem, DivergenceSpec(alpha=alpha, top_k=top_k, tail=tail), weighting, chunk_tokens=chunk
    )


def test_bfloat16_inputs_follow_the_float32_reference() -> None:
    """The GPU configuration: bf16 hidden states and heads, float32 softmax/divergence, bf16 gradients.

    The reference gets the same bf16 values upcast to float32, so the gap is bf16 rounding of the logits and
    of the gradient products (~1e-3 on the loss, ~6e-3 on the gradients)."""
    problem = make_problem(n=2, t=6, h=16, v=64, seed=13, dtype=torch.float32)
    low = Problem(
        **{
            **problem.__dict__,
            "hidden": problem.hidden.detach().bfloat16().requires_grad_(True),
            "weight": problem.weight.detach().bfloat16().requires_grad_(True),
            "bias": None,
            "teacher_hidden": problem.teacher_hidden.bfloat16(),
            "teacher_weight": problem.teacher_weight.bfloat16(),
        }
    )
    ref = Problem(
        **{
            **low.__dict__,
            "hidden": low.hidden.detach().float().requires_grad_(True),
            "weight": low.weight.detach().float().requires_grad_(True),
            "teacher_hidden": low.teacher_hidden.float(),
            "teacher_weight": low.teacher_weight.float(),
        }
    )
    weighting = LossWeighting(problem.mask, old_logp_N_T=problem.old_logp, is_clip=2.0)
    for spec in (DivergenceSpec(0.5, None), DivergenceSpec(0.5, 10)):
        settings = ChunkSettings(divergence=spec)
        out = chunked_distillation_loss(low.student(), low.teacher(), weighting, settings)
        want = reference_loss(ref, spec, weighting, 1.0)
        assert out.loss.dtype == torch.float32
        assert rel_err(out.loss, want.loss) <= 5e-3  # measured 1.2e-3, 1.4e-3
        grads = torch.autograd.grad(out.loss, low.params)
        assert [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16]
        for got, exp in zip(grads, torch.autograd.grad(want.loss, ref.params)):
            assert rel_err(got, exp) <= 1.5e-2  # measured 6e-3
