"""Mixed precision trains like float32 (float32 master weights, autocast compute; ``train.precision``).

With bfloat16 *weights* an AdamW update of lr·m/√v ≈ 1e-5·|θ| is below bfloat16's resolution (2⁻⁸ relative
spacing) and rounds away, so almost no weight moves. With float32 master weights every weight that has a
gradient moves in both runs, so the changed fractions agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opdkit.train import load_config, train
from opdkit.train.precision import LossScaler, autocast


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _changed_fraction(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    # compared in the saved dtype, so a bfloat16 checkpoint is not counted as "changed" by its rounding alone
    changed = sum(int((before[k].to(after[k].dtype) != after[k]).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def _run(overrides, tmp_path: Path, dtype: str, steps: int, lr: str) -> Path:
    cfg = load_config(None, [*overrides("opd", steps=steps), f"model.dtype={dtype}", f"optim.lr={lr}",
                             "eval.every=0", "data.eval=''"])  # fmt: skip
    return train(cfg, tmp_path / dtype).run_dir


def test_bf16_changes_as_many_weights_as_fp32(overrides, tiny_dirs, tmp_path):
    before = _weights(tiny_dirs["student"])
    fractions = {}
    for dtype in ("float32", "bfloat16"):
        run = _run(overrides, tmp_path, dtype, steps=3, lr="1e-5")
        after = _weights(run / "checkpoints" / "step_3" / "model")
        assert all(v.dtype == torch.float32 for v in after.values()), "the master weights are float32"
        fractions[dtype] = _changed_fraction(before, after)
    assert fractions["float32"] > 0.5  # AdamW moves every weight with a gradient by ~lr
    assert abs(fractions["bfloat16"] - fractions["float32"]) <= 0.1 * fractions["float32"], fractions


def _curve(run: Path, key: str) -> torch.Tensor:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor([r[key] for r in rows])


@pytest.mark.slow
def test_bf16_learning_curve_tracks_fp32(overrides, tmp_path):
    """GRPO for 20 steps at lr 1e-2 on the toy task (the verifier passes half the vocabulary as a first
    character), float32 vs bfloat16 from the same seed. GRPO's surrogate loss is ~0 on average by
    construction (advantages are centred), so its learning curve is the reward: measured, float32 goes from
    0.25 (first 5 steps) to 0.58 (last 5), bfloat16 from 0.25 to 0.65; 5-step windows differ by ≤ 0.07."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(None, [*overrides("grpo", steps=20), f"model.dtype={dtype}", "optim.lr=1e-2",
                                 "data.eval=''"])  # fmt: skip
        runs[dtype] = train(cfg, tmp_path / dtype).run_dir
    fp32, bf16 = (_curve(runs[d], "reward/mean") for d in ("float32", "bfloat16"))
    assert len(fp32) == len(bf16) == 20
    for curve in (fp32, bf16):  # both learn: +0.2 reward between the first and the last 5 steps
        assert curve[-5:].mean() > curve[:5].mean() + 0.2, (fp32, bf16)
    for a, b in zip(fp32.split(5), bf16.split(5)):  # and they stay together, window by window
        assert abs(float(b.mean() - a.mean())) <= 0.15, (fp32, bf16)
    # the update sizes agree too: mean gradient norms within 10 %
    g32, g16 = (_curve(runs[d], "grad/norm").mean() for d in ("float32", "bfloat16"))
    assert abs(float(g16 - g32)) <= 0.1 * float(g32)


def test_autocast_runs_matmuls_in_the_compute_dtype_and_leaves_float32_alone():
    linear = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast("bfloat16", "cpu"):
        assert linear(x).dtype == torch.bfloat16
    with autocast("float32", "cpu"):
        assert linear(x).dtype == torch.float32
    assert linear.weight.dtype == torch.float32


def test_float16_scaler_skips_an_overflow_and_halves_its_scale():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p], lr=0.1)
    scaler = LossScaler("float16", "cpu")
    scale0 = scaler.state_dict()["scale"]
    # a finite loss (2e36) whose scaled gradient 2e36 · S (S = 2¹⁶) overflows float32's 3.4e38
    scaler.backward((p**2).sum() * 1e36)
    scaler.unscale(opt)
    scaler.skip()
    assert scaler.state_dict()["scale"] == scale0 * 0.5  # GradScaler's backoff factor
    resumed = LossScaler("float16", "cpu")
    resumed.load_state_dict(scaler.state_dict())  # what a checkpoint's state.pt carries
    assert resumed.state_dict()["scale"] == scale0 * 0.5
    assert torch.equal(p.detach(), torch.ones(2))  # no update happened
    opt.zero_grad()
    scaler.backward(p.sum())  # d/dp sum = 1 per entry, scaled by S then unscaled
    scaler.unscale(opt)
    assert torch.allclose(p.grad, torch.ones(2))
    scaler.step(opt.step)  # the caller applies the update (the weight guard in the loop)
    assert not torch.equal(p.detach(), torch.ones(2))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_mixed_precision_run_resumes_exactly(overrides, tmp_path, dtype):
    """Straight 4 steps vs. the same run cut after its step-2 checkpoint (step 3-4 checkpoint and metrics
    deleted, as a crash would leave it) and resumed: the same metrics and the same float32 weights (the loss
    scale's round trip through a checkpoint is checked in the scaler test)."""
    import shutil

    cfg = load_config(None, [*overrides("sdpo", steps=4), f"model.dtype={dtype}", "checkpoint_every=2",
                             "keep_checkpoints=5", "data.eval=''"])  # fmt: skip
    straight = train(cfg, tmp_path / "straight").run_dir
    cut = tmp_path / "cut"
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / "checkpoints" / "step_4")
    rows = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(rows[:3]) + "\n")  # steps 1-3: step 3 was not checkpointed
    train(cfg, cut, resume=True)
    assert _rows(cut) == _rows(straight)
    a = _weights(straight / "checkpoints" / "step_4" / "model")
    b = _weights(cut / "checkpoints" / "step_4" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_a_local_teacher_is_loaded_in_the_compute_dtype_and_the_student_in_float32(overrides):
    from opdkit.train.setup import load_models, make_external_teacher

    cfg = load_config(None, [*overrides("opd"), "model.dtype=bfloat16"])
    models = load_models(cfg, torch.device("cpu"))
    teacher = make_external_teacher(cfg, models, torch.device("cpu"), 1.0)
    assert next(teacher.model.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in models.student.parameters())
