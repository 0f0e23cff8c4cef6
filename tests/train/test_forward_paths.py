"""The forward path is chosen once per run and the update step runs the student once per micro-batch on it.

- Both paths (``train.student``: hidden states + ``core.chunked``, or full logits) give every method the same
  loss, parameter gradient and metrics: each method has one loss body, so this guards the adapter.
- ``choose_forward`` checks the model when the run starts and leaves nothing on the model object; a model
  whose head does not reproduce its logits (logit soft-capping) gets full logits, and so does a method whose
  loss needs them (SDPO's sampled-token surrogate); activation checkpointing turns prompt sharing off.
- ``Rows.select`` slices every tensor field of a method's hand-off, nested ``Rows`` too; None passes through.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from opdkit.train.batch import Prepared, Rows
from opdkit.train.methods import METHODS
from opdkit.train.state import Optim
from opdkit.train.student import FULL_LOGITS, HIDDEN_STATES, HiddenStateForward, choose_forward
from opdkit.train.update import UpdateSettings, micro_batch_loss, run_updates

# 4 groups of 4: pass rates 0.5, 0.25, 0 and 1.
MIXED = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def _loss_grad_metrics(method, cfg, batch, ctx, rows):
    ctx.student.zero_grad(set_to_none=True)
    denoms = method.denominators(cfg, batch, rows)
    out = micro_batch_loss(method, cfg, batch, rows, denoms, ctx)
    out.loss.backward()
    grad = torch.cat([p.grad.flatten() for p in ctx.student.parameters() if p.grad is not None])
    return out.loss.detach(), grad, out.metrics


def _both_paths(step_setup, name, successes, extra=()):
    cfg, batch, ctx = step_setup(name, successes, extra=extra)
    if name == "sdpo_paced":
        ctx.paced_weights_D = torch.linspace(0.0, 2.0, 24)
    method = METHODS.get(name)
    rows = method.prepare(cfg, batch, ctx).rows
    ctx.forward = HIDDEN_STATES
    hidden = _loss_grad_metrics(method, cfg, batch, ctx, rows)
    ctx.forward = FULL_LOGITS
    return hidden, _loss_grad_metrics(method, cfg, batch, ctx, rows)


@pytest.mark.parametrize("name", METHODS.names())
def test_both_paths_give_every_method_the_same_loss_gradient_and_metrics(step_setup, name):
    hidden, full = _both_paths(step_setup, name, MIXED)
    assert full[1].abs().sum() > 0, "a vanishing gradient would make the comparison vacuous"
    torch.testing.assert_close(hidden[0], full[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(hidden[1], full[1], atol=1e-6, rtol=1e-4)
    assert hidden[2].keys() == full[2].keys()
    for key in full[2]:
        assert hidden[2][key] == pytest.approx(full[2][key], abs=1e-5, rel=1e-4), key


def test_srpo_without_an_sdpo_row_is_the_same_on_both_paths(step_setup):
    # Every group all wrong: no row has a correct sibling, the self-teacher runs on no row (an empty row
    # selection on both paths) and every GRPO advantage is 0, so both losses are exactly 0.
    hidden, full = _both_paths(step_setup, "srpo", [0] * 16)
    assert float(hidden[0]) == float(full[0]) == 0.0
    assert hidden[2]["sdpo_token_fraction"] == full[2]["sdpo_token_fraction"] == 0.0


def test_a_soft_capped_model_gets_full_logits_and_keeps_no_flag():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model

    capped = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=0.5,
    ))  # fmt: skip
    plain = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2), build_char_tokenizer()
    )
    # logits = 0.5·tanh(z/0.5) ≠ hidden·Wᵀ: the chunked path would compute another distribution
    assert choose_forward(capped, True) is FULL_LOGITS
    assert choose_forward(plain, True) == HIDDEN_STATES  # hidden states, sharing repeated prompts
    assert choose_forward(plain, False) is FULL_LOGITS
    for model in (capped, plain):
        assert not [k for k in vars(model) if k.startswith("_opdkit")]  # decided per run, not on the model
    # checkpointed layers cannot keep the shared prompts' cache across two calls: no sharing then
    (getattr(plain, "activation_checkpointing_enable", None) or plain.gradient_checkpointing_enable)()
    assert choose_forward(plain, True) == HiddenStateForward(share_prompts=False)


def test_the_sampled_token_surrogate_asks_for_full_logits_and_is_sdpo_on_them(step_setup):
    from opdkit.core.divergences import sampled_token_distill_loss
    from opdkit.core.losses import truncated_is_weight
    from opdkit.core.objectives import DistillAggregation, self_distillation_loss
    from opdkit.train.forward import forward_response

    cfg, batch, ctx = step_setup("sdpo", MIXED, extra=["method.full_logit=false", "method.alpha=1.0"])
    method = METHODS.get("sdpo")
    assert not method.hidden_state_loss(cfg)
    assert method.hidden_state_loss(dataclasses.replace(cfg, full_logit=True))
    assert choose_forward(ctx.student, method.hidden_state_loss(cfg)) is FULL_LOGITS
    ctx.forward = FULL_LOGITS
    rows = method.prepare(cfg, batch, ctx).rows
    with torch.no_grad():  # move the student off the EMA teacher (and off the old log-probs: IS ≠ 1)
        for p in ctx.student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    loss, grad, _ = _loss_grad_metrics(method, cfg, batch, ctx, rows)

    # §3.1 + §4.7 by composition: sg(logp − logp_T)·logp, times min(exp(logp − logp_old), 2), SDPO's mean
    ctx.student.zero_grad(set_to_none=True)
    logp = forward_response(ctx.student, batch.sequences(), 1.0).logp_N_T
    with torch.no_grad():
        teacher_seqs = rows.teacher_prompts.sequences(batch)
        logp_t = forward_response(ctx.self_teacher.model.eval(), teacher_seqs, 1.0).logp_N_T
    hand = self_distillation_loss(
        sampled_token_distill_loss(logp, logp_t), rows.loss_mask_N_T,
        is_weight_N_T=truncated_is_weight(logp, batch.old_logp_N_T, cap=2.0),
        aggregation=DistillAggregation(cfg.agg, cfg.denominator),
    ).loss  # fmt: skip
    hand.backward()
    hand_grad = torch.cat([p.grad.flatten() for p in ctx.student.parameters() if p.grad is not None])
    assert grad.abs().sum() > 0
    torch.testing.assert_close(loss, hand.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, hand_grad, atol=1e-6, rtol=1e-4)


class _Counting:
    """A forward path that counts the student forwards (and otherwise is the hidden-state path)."""

    hidden = True

    def __init__(self) -> None:
        self.rows: list[int] = []

    def student(self, model, seqs, temperature):
        self.rows.append(seqs.n)
        return HIDDEN_STATES.student(model, seqs, temperature)

    def __getattr__(self, name):
        return getattr(HIDDEN_STATES, name)


def test_the_update_runs_the_student_once_per_micro_batch(step_setup):
    cfg, batch, ctx = step_setup("sdpo", MIXED)
    method = METHODS.get("sdpo")
    prepared = method.prepare(cfg, batch, ctx)
    ctx.forward = _Counting()
    optimizer = torch.optim.SGD(ctx.student.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    settings = UpdateSettings(mini_batches=2, micro_batch_size=3, grad_clip=1.0)
    stats = run_updates(method, cfg, batch, prepared, ctx, Optim(optimizer, scheduler), settings)
    # 2 mini-batches of 2 groups (8 rows), each in micro-batches of 3, 3 and 2 rows: one forward each
    assert stats.updates == 2
    assert ctx.forward.rows == [3, 3, 2, 3, 3, 2]


@dataclasses.dataclass(frozen=True)
class _Inner(Rows):
    ids_N_P: torch.Tensor


@dataclasses.dataclass(frozen=True)
class _Outer(Rows):
    inner: _Inner
    w_N: torch.Tensor
    mask_N_T: torch.Tensor
    optional_N: torch.Tensor | None = None


def test_rows_select_picks_every_tensor_field_nested_rows_too():
    rows = _Outer(
        inner=_Inner(torch.arange(8).view(4, 2)),
        w_N=torch.tensor([0.1, 0.2, 0.3, 0.4]),
        mask_N_T=torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0]]),
    )
    picked = Prepared(rows, metrics={"m": 1.0}, skip_reason=None).select(torch.tensor([3, 1]))
    # rows 3 and 1 in that order, of every field
    assert torch.equal(picked.rows.inner.ids_N_P, torch.tensor([[6, 7], [2, 3]]))
    assert torch.equal(picked.rows.w_N, torch.tensor([0.4, 0.2]))
    assert torch.equal(picked.rows.mask_N_T, torch.tensor([[1, 0], [1, 1]]))
    assert picked.rows.optional_N is None and isinstance(picked.rows, _Outer)
    assert picked.metrics == {"m": 1.0}
