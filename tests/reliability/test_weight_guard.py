"""The weight-health guard refuses non-finite or exploding updates, changes nothing then, and stops the run.

Unit tests use two-element parameters with hand-computed updates; the loop tests train the tiny models with
``optim.lr=1e10`` and ``optim.lr=inf``, which before the guard ended "completed" with weights of 1e10 / inf in
every checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run_parts import build_parts, run_overrides

from opdkit.train import load_config, train, weight_guard
from opdkit.train.configio import ConfigError
from opdkit.train.weight_guard import guarded_step

G = torch.tensor([1.0, -2.0])  # the gradient of every unit test


def _param_and_adamw(theta, *, lr, weight_decay=0.0, fused=False):
    p = torch.nn.Parameter(torch.tensor(theta))
    return p, torch.optim.AdamW([p], lr=lr, weight_decay=weight_decay, fused=fused)


def _step(p, optimizer, max_ratio=10.0):
    p.grad = G.clone().to(p.dtype)
    return guarded_step(optimizer, max_ratio)


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_updates_are_predicted_exactly_and_applied(fused):
    # Adam with the same gradient at every step has m̂ = g and v̂ = g² (the bias corrections undo the EMAs),
    # so each update is −lr·g/(|g| + ε) = −lr·sign(g) = [−0.1, +0.1] for lr = 0.1, no weight decay.
    p, opt = _param_and_adamw([3.0, 4.0], lr=0.1, fused=fused)
    first = _step(p, opt)
    # ρ = ||Δ|| / ||θ|| = 0.1·√2 / 5 = 0.0282843
    assert first.applied and first.ratio == pytest.approx(0.1 * math.sqrt(2) / 5, rel=1e-5)
    assert torch.allclose(p.detach(), torch.tensor([2.9, 4.1]))
    second = _step(p, opt)  # t = 2: the prediction reads the moments and the step count
    # ||θ₁|| = √(2.9² + 4.1²) = √25.22
    assert second.applied and second.ratio == pytest.approx(0.1 * math.sqrt(2) / math.sqrt(25.22), rel=1e-5)
    assert torch.allclose(p.detach(), torch.tensor([2.8, 4.2]))


def test_the_prediction_is_the_same_when_a_tensor_spans_several_chunks(monkeypatch):
    # One element per chunk: the sums over chunks must give the single-chunk ρ = 0.1·√2 / 5 of the test above.
    monkeypatch.setattr(weight_guard, "_CHUNK", 1)
    p, opt = _param_and_adamw([3.0, 4.0], lr=0.1)
    check = _step(p, opt)
    assert check.applied and check.ratio == pytest.approx(0.1 * math.sqrt(2) / 5, rel=1e-5)


def test_decoupled_weight_decay_is_part_of_the_predicted_update():
    # θ' = θ·(1 − lr·λ) − lr·sign(g) = [3, 4]·0.99 + [−0.1, 0.1] = [2.87, 4.06]; Δ = [−0.13, 0.06];
    # ρ = √(0.0169 + 0.0036) / 5 = √0.0205 / 5
    p, opt = _param_and_adamw([3.0, 4.0], lr=0.1, weight_decay=0.1)
    check = _step(p, opt)
    assert check.applied and check.ratio == pytest.approx(math.sqrt(0.0205) / 5, rel=1e-5)
    assert torch.allclose(p.detach(), torch.tensor([2.87, 4.06]))


def _snapshot(p, opt):
    return p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}


@pytest.mark.parametrize(
    ("lr", "dtype", "theta", "reason"),
    [
        # ρ = 100·√2 / ||θ₁|| = 141.4 / 5.02 = 28.2 > 10
        (100.0, torch.float32, [3.0, 4.0], "28.2x the weights' norm > 10"),
        (math.inf, torch.float32, [3.0, 4.0], "non-finite"),
        # float16: ρ = 1e4·√2 / 6e4 = 0.24 is small, but −60000 − 1e4 = −70000 is beyond float16's 65504
        (1e4, torch.float16, [-60000.0, 4.0], "non-finite"),
    ],
)
def test_a_refused_adamw_update_changes_neither_weights_nor_optimizer_state(lr, dtype, theta, reason):
    p, opt = _param_and_adamw(theta, lr=0.1)
    p.data = p.data.to(dtype)
    assert _step(p, opt).applied  # one good update first, so there are moments and a step count to keep
    before = _snapshot(p, opt)
    opt.param_groups[0]["lr"] = lr
    check = _step(p, opt)
    assert not check.applied and reason in check.reason, check
    after = _snapshot(p, opt)
    assert torch.equal(before[0], after[0])
    assert before[1].keys() == after[1].keys() and all(
        torch.equal(before[1][k], after[1][k]) for k in before[1]
    )


def test_other_optimizers_are_guarded_by_a_snapshot_that_is_restored():
    # SGD with momentum 0.9: step 1 buf = g, θ₁ = θ − 0.1·g = [2.9, 4.2], ρ = 0.1·√5 / 5 = 0.0447214.
    # Step 2 at lr 100: buf = 0.9·g + g = 1.9·g, Δ = −190·g, ρ = 190·√5 / √(2.9² + 4.2²) = 424.85/5.104 > 10.
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    first = _step(p, opt)
    assert first.applied and first.ratio == pytest.approx(0.1 * math.sqrt(5) / 5, rel=1e-5)
    opt.param_groups[0]["lr"] = 100.0
    check = _step(p, opt)
    assert not check.applied and check.ratio == pytest.approx(190 * math.sqrt(5) / math.sqrt(26.05), rel=1e-4)
    assert torch.allclose(p.detach(), torch.tensor([2.9, 4.2]))
    assert torch.equal(opt.state[p]["momentum_buffer"], G)  # the buffer of step 1, not 1.9·g


# --- the training loop -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    return build_parts(tmp_path_factory.mktemp("guard_parts"))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    common = a.keys() & b.keys()
    return bool(common) and all(torch.equal(a[k].float(), b[k].float()) for k in common)


def test_an_infinite_learning_rate_is_refused_when_the_config_loads(parts):
    # optim.lr must be finite and > 0 (its declared range): the run never starts; non-finite updates that do
    # reach the optimizer are refused by the guard (the unit tests above)
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_config(None, [*run_overrides(parts, "sdpo", steps=6), "optim.lr=inf"])


@pytest.mark.parametrize("lr", ["1e10"])
def test_an_exploding_learning_rate_stops_the_run_and_checkpoints_the_untouched_weights(lr, parts, tmp_path):
    # Every update is refused (ρ ~ 1e11), so after optim.max_bad_updates = 3 steps the run
    # stops with a checkpoint whose student, EMA self-teacher, optimizer and scheduler are the initial ones.
    cfg = load_config(None, [*run_overrides(parts, "sdpo", steps=6), f"optim.lr={lr}"])
    result = train(cfg, tmp_path / "run")
    assert result.status.startswith("stopped: 3 consecutive updates refused"), result.status
    assert result.last_step == 3
    rows = _rows(tmp_path / "run")
    assert [r["train/weight_rollbacks"] for r in rows] == [1.0, 1.0, 1.0]
    assert [r["train/bad_updates_in_a_row"] for r in rows] == [1.0, 2.0, 3.0]
    assert all(r["train/updates"] == 0.0 for r in rows)
    ckpt = tmp_path / "run" / "checkpoints" / "step_3"
    initial = load_file(str(parts["student"] / "model.safetensors"))
    saved = load_file(str(ckpt / "model" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values()) and _same(saved, initial)
    assert _same(load_file(str(ckpt / "teacher.safetensors")), initial)  # the EMA never moved
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["optimizer"]["state"] == {} and state["scheduler"]["last_epoch"] == 0
    assert state["bad_updates"] == 3  # a resume continues the count


def test_with_max_bad_updates_0_the_run_completes_without_applying_a_bad_update(parts, tmp_path):
    cfg = load_config(
        None, [*run_overrides(parts, "grpo", steps=4), "optim.lr=1e10", "optim.max_bad_updates=0"]
    )
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed" and result.last_step == 4
    rollbacks = [r["train/weight_rollbacks"] for r in _rows(tmp_path / "run")]
    assert sum(rollbacks) >= 1 and all(r["train/updates"] == 0.0 for r in _rows(tmp_path / "run"))
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step_4" / "model" / "model.safetensors"))
    assert _same(saved, load_file(str(parts["student"] / "model.safetensors")))


def test_a_sane_learning_rate_is_never_refused_and_its_update_ratio_is_logged(parts, tmp_path):
    # The first Adam update moves each weight with a non-zero gradient by lr (and decays it by lr·λ·θ), so
    # ρ ≤ lr·√P/||θ|| + lr·λ = lr/rms(θ) + lr·λ, with lr = 1e-3, λ = 0.01 (the default weight decay).
    cfg = load_config(None, run_overrides(parts, "grpo", steps=2))
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    rows = _rows(tmp_path / "run")
    assert all(r["train/weight_rollbacks"] == 0.0 and r["train/bad_updates_in_a_row"] == 0.0 for r in rows)
    initial = load_file(str(parts["student"] / "model.safetensors"))
    rms = math.sqrt(
        sum(float(v.square().sum()) for v in initial.values()) / sum(v.numel() for v in initial.values())
    )
    first = next(r for r in rows if r["train/updates"] > 0)
    assert 0 < first["train/update_ratio"] <= 1e-3 / rms + 1e-5 + 1e-9
