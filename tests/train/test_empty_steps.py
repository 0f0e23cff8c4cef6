"""Steps without signal: skipped by default, or stepped on a zero gradient like the reference trainers
(``optim.step_on_empty: true``), where AdamW's momentum and weight decay still move the weights, the scheduler
advances and the EMA teacher follows."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from opdkit.teachers.self_teacher import SelfTeacherOptions, make_teacher_weights
from opdkit.train import load_config, train
from opdkit.train.state import Optim
from opdkit.train.update import step_without_signal


def _one_weight_model() -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return model


def test_zero_gradient_step_moves_the_weights_through_momentum_and_decay():
    student = _one_weight_model()
    teacher = make_teacher_weights(student, SelfTeacherOptions(update_rate=0.05))
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    # A real step with g = 1: θ = 1·(1 − 0.1·0.01) = 0.999; m = 0.1, v = 0.001, m̂ = v̂ = 1;
    # θ = 0.999 − 0.1·1/(1 + 1e-8) = 0.899.
    student.weight.grad = torch.ones_like(student.weight)
    optimizer.step()
    assert student.weight.item() == pytest.approx(0.899, abs=1e-6)
    teacher_before = next(teacher.model.parameters()).item()  # still 1.0: no EMA update after the real step
    assert teacher_before == 1.0

    stats = step_without_signal(student, teacher, Optim(optimizer, scheduler), updates=1)
    # The zero-gradient step: θ = 0.899·0.999 = 0.898101; m = 0.09, v = 0.000999;
    # m̂ = 0.09/(1 − 0.81) = 0.473684, v̂ = 0.000999/(1 − 0.998001) = 0.499750, √v̂ = 0.706930;
    # θ = 0.898101 − 0.1·0.473684/0.706930 = 0.898101 − 0.067006 = 0.831095.
    assert student.weight.item() == pytest.approx(0.831095, abs=2e-6)
    # EMA: θ_T = 1 + 0.05·(0.831095 − 1) = 0.991555
    assert next(teacher.model.parameters()).item() == pytest.approx(0.991555, abs=2e-6)
    assert stats.updates == 1 and scheduler.last_epoch == 1
    assert student.weight.grad is None  # no zero gradient left behind for the next step


def _no_signal_data(tmp_path):
    """Rows whose ground truth holds a character the tiny model cannot emit: every reward is 0, so every GRPO
    advantage is 0 and the method reports no signal."""
    path = tmp_path / "never.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Say something ({i})"}], "solution": "€",
         "verifier": "test/first_char", "data_source": "toy"}
        for i in range(8)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("step_on_empty", [False, True])
def test_steps_without_signal_in_the_loop(step_on_empty, overrides, tiny_dirs, tmp_path):
    data = _no_signal_data(tmp_path)
    cfg = load_config(
        None,
        [
            *overrides("grpo"),
            f"data.train={data}",
            "data.eval=",
            f"optim.step_on_empty={str(step_on_empty).lower()}",
        ],
    )
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.001, 0.01)
    train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/no_signal"] for r in rows] == [1.0, 1.0]
    assert [r["train/updates"] for r in rows] == ([1.0, 1.0] if step_on_empty else [0.0, 0.0])
    assert [r["train/skipped"] for r in rows] == ([0.0, 0.0] if step_on_empty else [1.0, 1.0])

    before = load_file(str(tiny_dirs["student"] / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "checkpoints" / "step_2" / "model" / "model.safetensors"))
    # With g ≡ 0 from the start m = v = 0, so only the decay moves a weight: θ·(1 − lr·wd) per step, two steps
    # -> θ·(1 − 1e-5)² (float32 rounding: relative 1e-6).
    scale = (1 - 0.001 * 0.01) ** 2 if step_on_empty else 1.0
    for key, value in before.items():
        torch.testing.assert_close(after[key], value * scale, rtol=1e-6, atol=1e-9)
    if step_on_empty:
        assert any(not torch.equal(after[k], before[k]) for k in before)
