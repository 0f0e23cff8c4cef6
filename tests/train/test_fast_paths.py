"""The loop's shortcuts compute the same step as the plain computation (value and parameter gradient):

- each distinct prompt run once, its key/value cache indexed out to the rows that share it (``train.prefix``),
  for the student's prompts (a question's G rollouts) and the self-teacher's (a group's reprompts);
- no old-log-prob forward on a step with one optimizer update: the loss uses the current log-probs, which
  the old ones equal before the first update (§2.2), and the loop still computes them when a
  method needs them in ``prepare`` or the step makes several updates.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from opdkit.train import load_config, train
from opdkit.train.batch import Sequences, StepBatch
from opdkit.train.methods import METHODS
from opdkit.train.prefix import packed_hidden, prefix_sharing_ok, response_hidden, shared_prompts
from opdkit.train.state import Optim
from opdkit.train.student import FULL_LOGITS, HIDDEN_STATES, choose_forward
from opdkit.train.update import UpdateSettings, micro_batch_loss, run_updates

# 4 groups of 4: pass rates 0.5, 0.25, 0 and 1 (the self-teacher prompts then repeat within groups).
MIXED = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def _grad(model: torch.nn.Module, value: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(value, [p for p in model.parameters()], allow_unused=True)
    return torch.cat([g.flatten() for g in grads if g is not None])


def _prompt_sets(step_setup):
    cfg, batch, ctx = step_setup("sdpo", MIXED)
    rows = METHODS.get("sdpo").prepare(cfg, batch, ctx).rows
    return (
        ctx.student,
        batch,
        {
            "student": (batch.prompt_ids_N_P, batch.prompt_mask_N_P),
            "self-teacher": (rows.teacher_prompts.ids_N_P, rows.teacher_prompts.mask_N_P),
        },
    )


def test_shared_prompts_index_back_to_every_row(step_setup):
    _, batch, prompt_sets = _prompt_sets(step_setup)
    for name, (ids, mask) in prompt_sets.items():
        shared = shared_prompts(ids, mask)
        assert shared is not None and shared.first_U.numel() < batch.n, name
        rebuilt = shared.first_U[shared.inverse_N]
        assert torch.equal(ids[rebuilt], ids) and torch.equal(mask[rebuilt], mask), name
    # the student's prompts: one per question, 4 rollouts each
    assert shared_prompts(batch.prompt_ids_N_P, batch.prompt_mask_N_P).first_U.numel() == 4
    distinct = torch.arange(12).reshape(3, 4)
    assert shared_prompts(distinct, torch.ones_like(distinct)) is None  # nothing to share


def test_shared_prompt_forward_equals_the_packed_forward(step_setup):
    model, batch, prompt_sets = _prompt_sets(step_setup)
    assert prefix_sharing_ok(model)
    keep = batch.response_mask_N_T.bool()
    for name, (ids, mask) in prompt_sets.items():
        args = (ids, mask, batch.response_ids_N_T, batch.response_mask_N_T)
        mine = response_hidden(model, *args, share_prompts=True)
        ref = packed_hidden(model.get_decoder(), *args)
        assert mine.shape == ref.shape == (batch.n, batch.response_ids_N_T.shape[1], ref.shape[-1])
        torch.testing.assert_close(mine[keep], ref[keep], atol=1e-5, rtol=1e-5, msg=name)
        w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0)) * keep.unsqueeze(-1)
        g_mine, g_ref = _grad(model, (mine * w).sum()), _grad(model, (ref * w).sum())
        assert g_ref.abs().sum() > 0
        # float32 sums in another order: errors relative to the largest gradient entry
        scale = float(g_ref.abs().max())
        torch.testing.assert_close(g_mine, g_ref, atol=1e-6 * scale, rtol=1e-4, msg=name)


def test_a_sliding_window_model_uses_the_packed_forward():
    # Sliding-window layers keep only the last tokens in their cache: the shared path is refused, and the
    # result is the packed forward's.
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=3, max_window_layers=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]] * 2)
    mask = torch.ones_like(ids)
    resp = torch.tensor([[6, 7, 8, 9], [10, 11, 12, 13]])
    assert not prefix_sharing_ok(model)
    path = choose_forward(model, True)  # the run's choice: hidden states, without prompt sharing
    assert path.hidden and not path.share_prompts
    with torch.no_grad():
        args = (ids, mask, resp, torch.ones_like(resp))
        mine = path.student(model, Sequences(*args), 1.0).hidden.hidden_N_T_H
        assert torch.equal(mine, packed_hidden(model.get_decoder(), *args))


def _loss_and_grad(name, cfg, batch, ctx, prepared):
    method = METHODS.get(name)
    denoms = method.denominators(cfg, batch, prepared.rows)
    out = micro_batch_loss(method, cfg, batch, prepared.rows, denoms, ctx)
    return out.loss.detach(), _grad(ctx.student, out.loss), out.metrics


@pytest.mark.parametrize(
    ("method", "hidden"), [("grpo", True), ("grpo", False), ("sdpo", True), ("sdpo", False)]
)
def test_on_policy_loss_without_old_logprobs_equals_the_loss_with_them(step_setup, method, hidden):
    cfg, batch, ctx = step_setup(method, MIXED)
    ctx.forward = HIDDEN_STATES if hidden else FULL_LOGITS
    assert not METHODS.get(method).needs_old_logp(cfg)
    prepared = METHODS.get(method).prepare(cfg, batch, ctx)
    with_old = _loss_and_grad(method, cfg, batch, ctx, prepared)
    without = _loss_and_grad(method, cfg, dataclasses.replace(batch, old_logp_N_T=None), ctx, prepared)
    assert with_old[1].abs().sum() > 0
    torch.testing.assert_close(without[0], with_old[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(without[1], with_old[1], atol=1e-6, rtol=1e-4)
    assert without[2].keys() == with_old[2].keys()
    for key in without[2]:
        assert without[2][key] == pytest.approx(with_old[2][key], abs=1e-5), key


def test_which_methods_need_the_old_logprobs(step_setup):
    needs = {
        name: METHODS.get(name).needs_old_logp(METHODS.get(name).config_type()) for name in METHODS.names()
    }
    # opd and scope read them in prepare (advantages, ℓS); srpo's loss mixes them into its own parts
    assert needs == {
        "grpo": False, "grpo_no_std": False, "opd": True, "scope": True, "sc_sdpo": False, "sdpo": False,
        "sdpo_hard_filter": False, "sdpo_paced": False, "srpo": True,
    }  # fmt: skip
    # an IS cap below 1 weights every on-policy token by the cap: that needs the old log-probs
    assert METHODS.get("sdpo").needs_old_logp(METHODS.get("sdpo").config_type(is_clip=0.5))


def test_several_updates_without_old_logprobs_are_refused(step_setup):
    cfg, batch, ctx = step_setup("grpo", MIXED)
    method = METHODS.get("grpo")
    batch = dataclasses.replace(batch, old_logp_N_T=None)
    assert isinstance(batch.select(torch.tensor([0, 3])), StepBatch)  # None survives row selection
    optimizer = torch.optim.SGD(ctx.student.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    with pytest.raises(ValueError, match="old log-probs"):
        run_updates(
            method, cfg, batch, method.prepare(cfg, batch, ctx), ctx, Optim(optimizer, scheduler),
            UpdateSettings(mini_batches=2, micro_batch_size=0, grad_clip=1.0),
        )  # fmt: skip


def test_the_loop_computes_old_logprobs_for_off_policy_updates(overrides, tmp_path):
    # With 2 updates per step the second one is off-policy: its PPO ratio differs from 1, so the logged
    # approximate KL is not 0 (it would be exactly 0 if the current log-probs stood in for the old ones).
    cfg = load_config(None, [*overrides("grpo", steps=1), "optim.mini_batches=2", "optim.lr=0.05"])
    train(cfg, tmp_path / "run")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train/updates"] == 2.0
    assert abs(row["loss/approx_kl"]) > 1e-6


def test_teacher_prompts_rendered_once_per_distinct_row_hold_each_row_s_demonstration(step_setup):
    # Rows sharing question, demonstration and feedback share one rendering; each row still gets a prompt
    # with a successful sibling's response (never its own) as the demonstration, or none in a failed group.
    from opdkit.teachers.self_teacher import RolloutTexts, build_teacher_context

    _, batch, ctx = step_setup("sdpo", MIXED)
    texts = RolloutTexts(
        batch.messages,
        batch.response_texts,
        batch.success_N.tolist(),
        batch.feedback,
        batch.group_ids_N.tolist(),
    )
    context = build_teacher_context(ctx.tokenizer, texts, ctx.self_teacher_options)
    assert len({id(ids) for ids in context.prompt_ids}) == batch.n  # separate lists, safe to modify
    for i, ids in enumerate(context.prompt_ids):
        text = ctx.tokenizer.decode(ids)
        group = range(4 * (i // 4), 4 * (i // 4) + 4)
        demos = [
            j for j in group if j != i and MIXED[j] and f"solution:\n\n{batch.response_texts[j]}" in text
        ]
        assert batch.messages[i][-1]["content"] in text
        assert bool(demos) == bool(context.sd_mask_N[i]) == any(MIXED[j] for j in group if j != i)
