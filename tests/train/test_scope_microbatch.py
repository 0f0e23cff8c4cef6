"""SCOPE's ``loss_averaging: microbatch`` on a real batch: loss and gradient equal the released code's loop,
one PG and one MLE token mean per token-budget micro-batch, each scaled by its share of the rows."""

from __future__ import annotations

import dataclasses

import torch
from test_compositions import MIXED, _close, _loss_and_grad

from opdkit.core.losses import clipped_surrogate
from opdkit.core.microbatch import balanced_micro_batches, micro_batch_token_mean
from opdkit.train.forward import forward_response


def test_microbatch_averaging_equals_the_per_micro_batch_loop(step_setup):
    cfg, batch, ctx = step_setup("scope", MIXED, extra=["method.use_seq_weights=false"])
    lengths = (batch.prompt_mask_N_P.sum(-1) + batch.response_mask_N_T.sum(-1)).tolist()
    budget = 3 * max(lengths)  # 16 rows -> several micro-batches of a few rows each
    cfg = dataclasses.replace(cfg, loss_averaging="microbatch", micro_batch_tokens=budget)
    scope = _loss_and_grad("scope", cfg, batch, ctx)

    parts = balanced_micro_batches(lengths, budget)
    assert 3 <= len(parts) < batch.n
    teacher = ctx.teacher.score(
        batch.unpadded_prompts(), batch.unpadded_responses(), pad_to=batch.response_ids_N_T.shape[1]
    )
    mask = batch.response_mask_N_T.bool()
    correct = batch.success_N.unsqueeze(-1)
    ctx.student.zero_grad(set_to_none=True)
    logp = forward_response(ctx.student, batch.sequences(), ctx.temperature).logp_N_T
    adv = torch.where(mask & ~correct, teacher.logp_N_T - batch.old_logp_N_T, 0.0)
    surrogate = clipped_surrogate(logp, batch.old_logp_N_T, adv, clip_low=0.2, clip_high=0.2)
    # the released loop: per micro-batch, PG token mean over all tokens + MLE token mean over correct tokens,
    # each times n_b / N
    pg = micro_batch_token_mean(surrogate.loss_N_T, mask, parts)
    mle = micro_batch_token_mean(-logp, mask & correct, parts)
    (pg + mle).backward()
    hand = (pg + mle).detach(), torch.cat([p.grad.flatten() for p in ctx.student.parameters()])
    _close(scope, hand)
    # ... and it differs from the default mini-batch means on this batch (the option is not a no-op)
    default = _loss_and_grad("scope", dataclasses.replace(cfg, loss_averaging="minibatch"), batch, ctx)
    assert not torch.allclose(default[0], scope[0], atol=1e-6)


def test_the_loop_trains_with_microbatch_averaging(overrides, tmp_path):
    import json

    from opdkit.train import load_config, train

    cfg = load_config(
        None, [*overrides("scope"), "method.loss_averaging=microbatch", "method.micro_batch_tokens=200"]
    )
    train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["scope/micro_batches"] >= 1 and r["train/updates"] == 1 for r in rows)
    # each row (short prompt + at most 6 response tokens) fits 200 tokens, the 16 rows together do not
    assert rows[0]["scope/micro_batches"] > 1
