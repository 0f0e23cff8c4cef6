"""TrainState: what a checkpoint's ``state.pt`` holds, and that loading it puts every part back."""

from __future__ import annotations

import pytest
import torch

from opdkit.train.methods import MethodContext
from opdkit.train.precision import LossScaler
from opdkit.train.state import Optim, PromptSampler, TrainState
from opdkit.train.student import FULL_LOGITS

STATE_KEYS = {
    "step", "optimizer", "scheduler", "sampler", "rng", "teacher_failures", "bad_updates", "paced_weights_D",
    "loss_scaler",
}  # fmt: skip


def _state(weight: float) -> TrainState:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 4))
    ctx = MethodContext(student=model, tokenizer=None, temperature=1.0, forward=FULL_LOGITS)
    return TrainState(
        Optim(optimizer, scheduler), LossScaler("float32", "cpu"), PromptSampler(5, seed=3), ctx
    )


def test_a_saved_state_loads_back_into_fresh_objects():
    saved = _state(1.0)
    saved.ctx.student.weight.grad = torch.ones(1, 1)
    saved.optim.optimizer.step()
    saved.optim.scheduler.step()
    saved.sampler.next(7)  # 5 questions per epoch: epoch 1, position 2
    saved.ctx.paced_weights_D = torch.tensor([0.5, 1.0])
    saved.end_step(4, 2, teacher_failed=True)
    state = saved.state_dict()
    assert set(state) == STATE_KEYS
    # one failed step after none before: the failure streak is 1
    assert (state["step"], state["teacher_failures"], state["bad_updates"]) == (4, 1, 2)

    fresh = _state(0.0)
    fresh.load_state_dict(state, {})
    assert (fresh.step, fresh.teacher_failures, fresh.bad_updates) == (4, 1, 2)
    assert fresh.sampler.state_dict() == {"epoch": 1, "pos": 2}
    # warm-up schedule of 4 steps after one step: lr = 0.1 · 2/4
    assert fresh.optim.scheduler.get_last_lr() == [0.05]
    moments = fresh.optim.optimizer.state_dict()["state"][0]
    assert moments["exp_avg"].item() == pytest.approx(0.1, abs=1e-7)  # m = (1 − 0.9) · g, g = 1 (float32)
    assert torch.equal(fresh.ctx.paced_weights_D, torch.tensor([0.5, 1.0]))


def test_the_streaks_restart_and_older_checkpoints_take_start_values():
    state = _state(1.0)
    state.end_step(1, 0, teacher_failed=True)
    state.end_step(2, 0, teacher_failed=True)
    assert state.teacher_failures == 2
    state.end_step(3, 1, teacher_failed=False)
    assert (state.teacher_failures, state.bad_updates) == (0, 1)

    old = state.state_dict()
    for key in ("bad_updates", "loss_scaler", "paced_weights_D"):  # keys added after the first checkpoints
        del old[key]
    fresh = _state(0.0)
    fresh.ctx.paced_weights_D = torch.ones(2)
    fresh.load_state_dict(old, {})
    assert (fresh.step, fresh.bad_updates, fresh.ctx.paced_weights_D) == (3, 0, None)
